"""The ``amoeba`` command line (:mod:`amoeba_plugin.cli.main`) and its ``optimum-cli amoeba`` bridge."""
