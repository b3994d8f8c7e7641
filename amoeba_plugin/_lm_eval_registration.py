"""The lm-eval model name ``amoeba``, registered lazily at ``import amoeba_plugin`` (no torch needed).

Kept apart from :mod:`amoeba_plugin.eval.lm_eval` (which imports torch through the eval package) so
importing the package stays quick; that module re-exports these names.
"""
from __future__ import annotations

#: the name of the lm-eval model, ``lm_eval --model amoeba``
MODEL_NAME = "amoeba"
MODEL_TARGET = "amoeba_plugin.eval.lm_eval_model:AmoebaLM"


def register_lm_eval_model() -> bool:
    """Register the lm-eval model ``amoeba`` (lazily: a ``module:Class`` string). Idempotent.

    Returns False when lm-eval is not installed. Cheap (a few ms): it imports only
    ``lm_eval.api.registry`` and ``lm_eval.models`` (lm-eval's own table of lazy names; it must be
    imported first, or lm-eval, seeing a non-empty registry, would never fill in ``hf`` and the rest).
    """
    try:
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    return True
