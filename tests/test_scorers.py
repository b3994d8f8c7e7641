"""Host subnet scorers: plans or kept layers, applied softly; any evaluator as a fitness."""
import math

import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.eval import Evaluator, PerplexityEvaluator
from amoeba_plugin.eval.scorers import EvaluatorScorer, LossScorer, PerplexityScorer, build_scorer, check_spec
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.surgery import apply_soft
from amoeba_plugin.testing import make_tiny


@pytest.fixture(scope="module")
def setup():
    model = make_tiny("llama")
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    return model, anatomy_of(model), windows


def test_a_plan_is_scored_softly_and_the_model_restored(setup):
    model, anatomy, windows = setup
    plan = Plan([LayerPlan(0, head_channels=[[0, 4], [1, 2, 5, 6]], mlp_channels=list(range(40))), LayerPlan(2)])
    before = [p.detach().clone() for p in model.parameters()]
    loss = LossScorer(windows)(model, anatomy, plan)
    with torch.no_grad(), apply_soft(model, anatomy, plan):
        logits = model(input_ids=windows).logits[:, :-1]
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1))
    assert loss == pytest.approx(float(want), rel=1e-5)
    assert PerplexityScorer(windows)(model, anatomy, plan) == pytest.approx(math.exp(loss), rel=1e-6)
    assert LossScorer(windows)(model, anatomy, [0, 2]) != loss  # kept layers only: another subnet
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_an_evaluator_becomes_a_scorer(setup):
    model, anatomy, windows = setup

    class Fixed(Evaluator):
        name = "fixed"

        def evaluate(self, model, tokenizer, **options):
            return {"score": 0.25, "note": "x"}

    plan = Plan([LayerPlan(0), LayerPlan(1)])
    scorer = EvaluatorScorer(PerplexityEvaluator(), None, windows=windows)
    assert not scorer.higher_is_better
    assert scorer(model, anatomy, plan) == pytest.approx(PerplexityScorer(windows)(model, anatomy, plan), rel=1e-6)
    fixed = EvaluatorScorer(Fixed(), key="score", higher_is_better=True)
    assert fixed(model, anatomy, plan) == 0.25 and fixed.higher_is_better
    with pytest.raises(AmoebaError, match="returned no 'perplexity'.*fitness_key"):
        EvaluatorScorer(Fixed())(model, anatomy, plan)
    with pytest.raises(AmoebaError, match="not a number"):
        EvaluatorScorer(Fixed(), key="note")(model, anatomy, plan)
    with pytest.raises(AmoebaError, match="not an Evaluator"):
        EvaluatorScorer(object())


def test_specs_name_their_role():
    assert check_spec(None) == "loss" and check_spec(" lm-eval:x ") == "lm-eval:x"
    with pytest.raises(AmoebaError, match="unknown fitness 'acc'"):
        check_spec("acc", "fitness")
    with pytest.raises(AmoebaError, match="does not take these options"):
        build_scorer("loss", None, None, None, torch.zeros(2, 4, dtype=torch.long), bogus=1)
