"""Old import paths of modules that moved, kept working for one release.

Importing an old path warns (DeprecationWarning, naming the new path) and gives the module at the
new path itself (the same object, so monkeypatching either name patches both). There is no file at
the old path, so a change made there on another branch follows the file to its new place when the
branches merge (git's rename detection). Remove an entry, and this module when empty, one release on.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module name -> new module name
MOVED = {
    "amoeba_plugin.allocation": "amoeba_plugin.pruning.allocation",
    "amoeba_plugin.compensation": "amoeba_plugin.pruning.compensation",
    "amoeba_plugin.metrics.collect": "amoeba_plugin.calibration",
    "amoeba_plugin.reformation": "amoeba_plugin.pruning.reformation",
    "amoeba_plugin.uniform": "amoeba_plugin.pruning.uniform",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names before any other finder, so a stale copy of an old module elsewhere on the
    path (an older install, another checkout) is never imported instead."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module) -> None:
        old = module.__name__
        new = MOVED[old]
        warnings.warn(f"{old} moved to {new}; import it from there (the old path goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        sys.modules[old] = importlib.import_module(new)  # the import statement returns what is here


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
