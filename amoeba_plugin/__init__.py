"""amoeba-plugin: structured compression of Hugging Face causal LMs, with methods as pluggy plugins.

Importing the package registers the ``amoeba`` architecture with transformers' Auto classes (so
heterogeneous exports load with plain ``from_pretrained``) and the ``amoeba`` model with
lm-evaluation-harness (lazily, when lm-eval is installed). The public API is imported lazily.
"""
from __future__ import annotations

import importlib

from .arch import register_with_transformers as _register_arch
from .hookspecs import hookimpl

__version__ = "0.1.0"

_register_arch()

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
