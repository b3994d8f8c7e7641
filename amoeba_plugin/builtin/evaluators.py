"""Built-in evaluators: perplexity, and lm-eval tasks (lm-eval itself is imported only when one runs)."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_evaluators(register):
    from ..eval import PerplexityEvaluator
    from ..eval.lm_eval import LMEvalEvaluator  # lm_eval itself is imported only when the evaluator runs

    register(PerplexityEvaluator())
    register(LMEvalEvaluator())
