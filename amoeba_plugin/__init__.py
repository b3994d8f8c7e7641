"""amoeba-plugin: structured compression of Hugging Face causal LMs, with methods as pluggy plugins.

Importing the package registers the ``amoeba`` architecture with transformers' Auto classes (so
heterogeneous exports load with plain ``from_pretrained``; done when transformers is imported, so
importing this package costs no torch) and the ``amoeba`` model with lm-evaluation-harness (lazily,
when lm-eval is installed). The public API is imported lazily.
"""
from __future__ import annotations

import importlib

from . import _autoregister, _moved
from .hookspecs import hookimpl

__version__ = "0.1.0"

_autoregister.install()
_moved.install()  # old import paths of moved modules, for one release


def _register_lm_eval_model() -> None:
    """The lm-eval model ``amoeba``, as a lazy ``module:Class`` name: costs ~3 ms (lm-eval's registry
    module only), nothing when lm-eval is absent, and never breaks the import."""
    try:
        from ._lm_eval_registration import register_lm_eval_model

        register_lm_eval_model()
    except Exception as exc:  # noqa: BLE001 - an incompatible lm-eval must not make amoeba_plugin unimportable
        import warnings

        warnings.warn(f"amoeba: could not register the lm-eval model 'amoeba' ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)


_register_lm_eval_model()

_LAZY = {
    "Anatomy": "anatomy", "ArchitectureAdapter": "anatomy", "anatomy_of": "anatomy", "get_adapter": "anatomy",
    "Plan": "plan", "LayerPlan": "plan",
    "apply_soft": "surgery", "slice_model": "surgery",
    "Budget": "budget", "Method": "methods", "Metric": "metrics", "Exporter": "export",
    "Evaluator": "eval", "TextSource": "data",
    "AmoebaPruner": "api", "PruningConfig": "api", "get_calibration_dataset": "api",
    "load_model": "models",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'amoeba_plugin' has no attribute {name!r}")


__all__ = ["hookimpl", "__version__", *_LAZY]
