"""Adds ``optimum-cli amoeba ...`` (amoeba-plugin) to Optimum's CLI.

``optimum-cli`` imports every file in the ``optimum.commands.register`` namespace on each start and
does not guard them, so this one must never raise, and must stay quick: it loads
``amoeba_plugin/cli/optimum.py`` by path, without importing the ``amoeba_plugin`` package (which
imports transformers); the package is imported only when an ``amoeba`` command runs.
"""
try:
    import importlib.util as _util
    import pathlib as _pathlib
    import sys as _sys

    _NAME = "amoeba_plugin.cli.optimum"
    if _NAME in _sys.modules:
        AmoebaCommand = _sys.modules[_NAME].AmoebaCommand
    else:
        _package = _util.find_spec("amoeba_plugin")  # finds, does not import, a top-level package
        _path = _pathlib.Path(list(_package.submodule_search_locations)[0]) / "cli" / "optimum.py"
        _spec = _util.spec_from_file_location("_amoeba_plugin_optimum_cli", _path)
        _module = _util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        AmoebaCommand = _module.AmoebaCommand
    REGISTER_COMMANDS = [AmoebaCommand]
except Exception:  # never break optimum-cli for everyone else
    REGISTER_COMMANDS = []
