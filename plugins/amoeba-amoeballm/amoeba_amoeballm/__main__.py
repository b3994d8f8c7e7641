"""``python -m amoeba_amoeballm train BUNDLE`` = ``amoeba amoeballm train BUNDLE``: a module entry
point so ``accelerate launch -m amoeba_amoeballm train ...`` works without knowing a script path."""
import sys

from amoeba_plugin.cli.main import main

if __name__ == "__main__":
    main(["amoeballm", *sys.argv[1:]], prog_name="python -m amoeba_amoeballm")
