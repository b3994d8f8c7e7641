"""``python -m amoeba_sheared prune|train ...``: what ``accelerate launch -m amoeba_sheared`` runs."""
from .cli import sheared

if __name__ == "__main__":
    sheared()
