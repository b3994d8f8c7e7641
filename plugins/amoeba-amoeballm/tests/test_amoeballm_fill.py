"""The ``amoeballm`` method fills its budget (every DP depth topped up with the width ranking, within
2% under the budget, never above); ``fill="none"`` still picks a (depth, width ratio) grid shape."""
import pytest
from amoeba_amoeballm.method import AmoebaLLMOptions, shallowest_useful_depth
from amoeba_amoeballm.shapes import Shape

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import get_calibration_dataset
from amoeba_plugin.budget import Budget
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.models import load_model
from amoeba_plugin.plan import Plan
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import FILL_TOLERANCE, fill_ratio
from amoeba_plugin.testing import FAMILIES, assert_soft_equals_sliced, make_tiny, token_ids

BUDGETS = ["0.8", "0.7", "0.5", "nonembed=0.8", "nonembed=0.7", "nonembed=0.5"]


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model("amoeba-tiny-sotu")
    return model, tokenizer, anatomy_of(model), get_calibration_dataset(tokenizer, "sotu:train", 2, 32, 0)


def _prune(model, tokenizer, anatomy, text, windows, **options):
    context = PruningContext(model, tokenizer, anatomy, Budget.parse(text), options=options,
                             calibration=lambda: windows)
    return get("methods", "amoeballm").prune(context)


def _ratio(text, anatomy, plan):
    budget = Budget.parse(text)
    assert budget.fits(plan, anatomy)
    return fill_ratio(budget, anatomy, plan)


@pytest.mark.parametrize("text", BUDGETS)
def test_embedded_model_lands_within_two_percent_under_the_budget(embedded, text):
    model, tokenizer, anatomy, windows = embedded
    out = _prune(model, tokenizer, anatomy, text, windows)
    assert 1 - FILL_TOLERANCE <= _ratio(text, anatomy, out.plan) <= 1.0
    assert out.info["depth"] == len(out.plan.layers) and out.info["depth_losses"]
    # every depth that competed was filled; the winner has the lowest calibration loss
    assert out.info["depth_losses"][str(out.info["depth"])] == min(out.info["depth_losses"].values())
    assert out.plan.output_bias and out.patch


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_families_land_within_two_percent_under_the_budget(family):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    for text in BUDGETS:
        out = _prune(model, None, anatomy, text, token_ids(2, 16))
        assert 1 - FILL_TOLERANCE <= _ratio(text, anatomy, out.plan.validate(anatomy)) <= 1.0, (family, text)
    assert_soft_equals_sliced(model, anatomy, out.plan, token_ids(2, 12, seed=1), patch=out.patch)


def test_uniform_allocation_fills_with_a_uniform_shape(embedded):
    model, tokenizer, anatomy, windows = embedded
    out = _prune(model, tokenizer, anatomy, "0.6", windows, allocation="uniform")
    assert 1 - FILL_TOLERANCE <= _ratio("0.6", anatomy, out.plan) <= 1.0
    assert out.plan.is_uniform(anatomy)


def test_fill_none_picks_a_grid_shape_as_before(embedded):
    model, tokenizer, anatomy, windows = embedded
    widths = [1.0, 0.75, 0.5]
    out = _prune(model, tokenizer, anatomy, "nonembed=0.7", windows, fill="none", widths=widths, min_layers=6)
    shape = Shape.parse(out.info["shape"])
    assert shape.width in widths and 6 <= shape.depth <= 8 and len(out.plan.layers) == shape.depth
    assert _ratio("nonembed=0.7", anatomy, out.plan) <= 1.0
    assert_soft_equals_sliced(model, anatomy, out.plan, token_ids(2, 12, vocab_size=8192), patch=out.patch)


def test_the_dp_stops_at_the_shallowest_depth_that_can_fill(embedded):
    model, tokenizer, anatomy, windows = embedded
    for text in BUDGETS:
        bound = Budget.parse(text).bind(anatomy)
        depth = shallowest_useful_depth(bound, anatomy)
        full = Plan.full(anatomy)
        assert bound.measure(Plan(full.layers[:depth], full.source)) >= (1 - FILL_TOLERANCE) * bound.target
        assert depth == 1 or bound.measure(Plan(full.layers[:depth - 1], full.source)) < (1 - FILL_TOLERANCE) * bound.target
    assert AmoebaLLMOptions().fill == "width" and AmoebaLLMOptions(fill="none").fill == "none"
