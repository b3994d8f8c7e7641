"""Knowledge-preservation scorers for the depth DP: how good is the subnet that keeps these layers?

The scorers are the host's (:mod:`amoeba_plugin.eval.scorers`): called with the kept layer indices,
each applies that layer subset softly (skipped layers pass their input through), so the DP tries
hundreds of subnets on one model without copying weights. The paper's choice is accuracy on an lm-eval
task (5-shot MMLU). The official code scores the first 320 questions of the subject-sorted MMLU file
(subjects A to H only); here questions are drawn seeded and, for a group, equally from every subtask,
and the score is the macro average over subtasks. The draw is made once, so every DP evaluation sees
the same questions.
"""
from __future__ import annotations

from amoeba_plugin.eval import scorers as _host
from amoeba_plugin.eval.scorers import (
    DEFAULT_QUESTIONS,
    SPECS,
    LMEvalScorer,
    LossScorer,
    PerplexityScorer,
    layer_plan,
    stratified_indices,
)


def check_spec(spec: str | None) -> str:
    """The normalised depth-scorer spec (``loss``, ``perplexity``, ``lm-eval:TASK``), or its error."""
    return _host.check_spec(spec, "depth scorer")


def build_scorer(spec: str, model, tokenizer, anatomy, calibration_windows, seed: int = 0, **options):
    """A depth scorer from a spec; see :func:`amoeba_plugin.eval.scorers.build_scorer`."""
    return _host.build_scorer(spec, model, tokenizer, anatomy, calibration_windows, seed, "depth scorer", **options)


__all__ = ["DEFAULT_QUESTIONS", "SPECS", "LMEvalScorer", "LossScorer", "PerplexityScorer", "build_scorer",
           "check_spec", "layer_plan", "stratified_indices"]
