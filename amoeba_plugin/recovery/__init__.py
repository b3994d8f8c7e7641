"""Recovery: heal a pruned model by training it, as a host capability every method and user shares.

Structured pruning removes whole units, and the model loses quality that a short training run wins
back. The most effective recipe per token is logit distillation from the source model (Minitron:
the KL to the teacher's logits beats the plain LM loss); Sheared-LLaMA adds continued pre-training on
a domain mixture steered by dynamic batch loading. Both are here, for stock Hugging Face models and
the ``amoeba`` architecture alike::

    from amoeba_plugin.recovery import RecoveryConfig, recover

    cfg = RecoveryConfig(tokens=65536, loss="distill", source="sotu:train", eval_source="sotu:validation")
    result = recover(pruned, source_model, tokenizer, cfg, run_dir="runs/heal")
    result.model, result.log, result.tokens, result.wall_s

The modules: :mod:`.config` (:class:`RecoveryConfig`, typed options), :mod:`.losses` (distillation,
LM, mixed), :mod:`.mixture` (training text, domain mixtures, :func:`update_proportions`),
:mod:`.checkpoint` (the run directory, atomic checkpoints), :mod:`.loop` (:func:`recover`) and
:mod:`.saving` (:func:`save_recovered`: a healed model written atomically with its provenance).
See docs/recovery.md.
"""
from __future__ import annotations

from .config import RecoveryConfig, parse_pairs
from .loop import RecoveryResult, recover
from .mixture import update_proportions


def __getattr__(name: str):
    if name in ("save_recovered", "recovery_records"):
        from . import saving

        return getattr(saving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RecoveryConfig", "RecoveryResult", "parse_pairs", "recover", "recovery_records", "save_recovered",
           "update_proportions"]
