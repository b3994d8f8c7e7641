"""Built-in evaluators: perplexity."""
from __future__ import annotations

from ..eval import PerplexityEvaluator
from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_evaluators(register):
    register(PerplexityEvaluator())
