"""What lm-eval needs to find amoeba: the model ``amoeba`` and the folder of the packaged tasks (no torch).

Two ways in. lm-eval 0.4.13 reads no entry points, so ``import amoeba_plugin`` registers the model
(:func:`register_lm_eval_model`) and ``amoeba-lm-eval`` adds :func:`tasks_dir` to ``--include_path``.
The next lm-eval reads the ``lm_eval.models`` (EleutherAI/lm-evaluation-harness#4013) and, if #4015
lands, ``lm_eval.tasks`` entry points that pyproject.toml declares: ``amoeba`` -> :data:`MODEL_TARGET`
and ``amoeba`` -> :func:`tasks_dir`. Both ways name the same objects, so either order of registration
is fine. Kept apart from :mod:`amoeba_plugin.eval.lm_eval` (which imports torch through the eval
package) so importing the package, or lm-eval loading an entry point, stays quick; that module
re-exports these names.
"""
from __future__ import annotations

from pathlib import Path

#: the name of the lm-eval model, ``lm_eval --model amoeba``
MODEL_NAME = "amoeba"
MODEL_TARGET = "amoeba_plugin.eval.lm_eval_model:AmoebaLM"
_TASKS = Path(__file__).resolve().parent / "eval" / "tasks"


def tasks_dir() -> str:
    """The folder of the packaged lm-eval task YAMLs, for ``--include_path`` / ``TaskManager(include_path=...)``."""
    return str(_TASKS)


def register_lm_eval_model() -> bool:
    """Register the lm-eval model ``amoeba`` (lazily: a ``module:Class`` string). Idempotent.

    Returns False when lm-eval is not installed. Cheap (a few ms): it imports only
    ``lm_eval.api.registry`` and ``lm_eval.models`` (lm-eval's own table of lazy names; it must be
    imported first, or lm-eval, seeing a non-empty registry, would never fill in ``hf`` and the rest).
    A name already there (e.g. the ``lm_eval.models`` entry point of a newer lm-eval) is left alone.
    """
    try:
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    return True
