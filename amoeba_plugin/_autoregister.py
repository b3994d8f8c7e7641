"""Register the ``amoeba`` architecture with transformers' Auto classes without importing transformers.

``import amoeba_plugin`` must stay cheap (``amoeba --help`` in well under a second), yet an export in the
``amoeba`` architecture must load with plain ``AutoModelForCausalLM.from_pretrained`` after it. So the
registration runs the moment transformers itself is imported (a post-import hook on ``sys.meta_path``),
or at once when transformers is already loaded.
"""
from __future__ import annotations

import importlib.abc
import sys
import warnings

TARGET = "transformers"


def _register() -> None:
    arch = sys.modules.get(f"{__package__}.arch")
    if arch is not None and not hasattr(arch, "register_with_transformers"):
        return  # transformers was imported by amoeba_plugin.arch itself, which registers when it finishes
    try:
        from .arch import register_with_transformers

        register_with_transformers()
    except Exception as exc:  # noqa: BLE001 - an incompatible transformers must not break its own import
        warnings.warn(f"amoeba: could not register the 'amoeba' architecture with transformers "
                      f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``transformers`` so :func:`_register` runs after it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        _uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module):
            exec_module(module)
            sys.modules.setdefault(TARGET, module)
            _register()

        loader.exec_module = exec_then_register  # this loader instance only, for this one import
        return spec


_hook = _AfterImport()


def _uninstall() -> None:
    while _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def install() -> None:
    """Register now if transformers is loaded, else as soon as it is imported (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
