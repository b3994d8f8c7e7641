"""ShortGPT fills its budget: whole layers, then width in the kept layers, within 2% under the budget;
``fill="none"`` is the paper's whole-layers-only method."""
import pytest

from amoeba_plugin import AmoebaPruner, PruningConfig
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import FILL_TOLERANCE, fill_ratio
from amoeba_plugin.testing import FAMILIES, make_tiny, token_ids

BUDGETS = ["0.8", "0.7", "0.5", "nonembed=0.8", "nonembed=0.7", "nonembed=0.5"]
DATA = {"calibration": "sotu:train", "calibration_samples": 8, "calibration_seq_len": 64}


@pytest.fixture(scope="module")
def pruner():
    return AmoebaPruner.from_pretrained("amoeba-tiny-sotu")


def _ratio(text, anatomy, plan):
    budget = Budget.parse(text)
    assert budget.fits(plan, anatomy)
    return fill_ratio(budget, anatomy, plan)


@pytest.mark.parametrize("budget", BUDGETS)
def test_embedded_model_lands_within_two_percent_under_the_budget(pruner, budget):
    out = pruner.prune(PruningConfig(method="shortgpt", budget=budget, **DATA))
    assert 1 - FILL_TOLERANCE <= _ratio(budget, pruner.anatomy, out.plan) <= 1.0
    paper = pruner.prune(PruningConfig(method="shortgpt", budget=budget, method_options={"fill": "none"}, **DATA))
    # the paper's plan: whole layers only, the lowest-scored first, at most one layer under the budget
    assert all(lp == type(lp)(lp.index) for lp in paper.plan.layers)
    assert _ratio(budget, pruner.anatomy, paper.plan) <= _ratio(budget, pruner.anatomy, out.plan)
    if out.info.get("filled_with_width"):  # one layer fewer dropped than the paper's plan
        assert len(out.info["dropped_layers"]) == len(paper.info["dropped_layers"]) - 1
        assert set(out.info["dropped_layers"]) < set(paper.info["dropped_layers"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_families_land_within_two_percent_under_the_budget(family):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    method = get("methods", "shortgpt")
    for text in BUDGETS:
        context = PruningContext(model, None, anatomy, Budget.parse(text), calibration=lambda: token_ids(4, 32))
        plan = method.prune(context).plan.validate(anatomy)
        assert 1 - FILL_TOLERANCE <= _ratio(text, anatomy, plan) <= 1.0, (family, text)
