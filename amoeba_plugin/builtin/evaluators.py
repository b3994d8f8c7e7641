"""Built-in evaluators: perplexity, and lm-eval tasks (lm-eval itself is imported only when one runs)."""
from __future__ import annotations

from ..eval import PerplexityEvaluator
from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_evaluators(register):
    # a light module: lm_eval itself is imported only when the evaluator runs
    from ..eval.lm_eval import LMEvalEvaluator

    register(PerplexityEvaluator())
    register(LMEvalEvaluator())
