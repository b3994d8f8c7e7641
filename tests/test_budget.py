"""Budgets parse from the CLI's strings, reject impossible values with a fix, and measure plans."""
import pytest

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import InvalidBudgetError
from amoeba_plugin.plan import LayerPlan, Plan


@pytest.mark.parametrize("text,kind,value", [
    ("0.5", "params", 0.5), ("50%", "params", 0.5), ("params=0.8", "params", 0.8),
    ("nonembed=0.6", "nonembed", 0.6), ("macs=0.5", "macs", 0.5), ("count=3e6", "count", 3_000_000),
    ("1", "params", 1.0),
])
def test_parse(text, kind, value):
    b = Budget.parse(text)
    assert (b.kind, b.value) == (kind, value)
    assert b.to_dict() == {"kind": kind, "value": value, "tolerance": 0.0}
    assert Budget.from_dict(b.to_dict()) == b


def test_parse_shape():
    b = Budget.parse("shape=layers:6,heads:4,kv_heads:2")
    assert b.kind == "shape" and b.value == {"layers": 6, "heads": 4, "kv_heads": 2}


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "abc", "macs=0", "count=0", "flops=0.5", "shape=layers:x",
                                 "shape=wings:2"])
def test_bad_budgets_name_the_fix(bad):
    with pytest.raises(InvalidBudgetError) as err:
        Budget.parse(bad)
    assert "Fix:" in str(err.value) and "\n" not in str(err.value)


def test_fits_and_measures(tiny_llama):
    a = anatomy_of(tiny_llama)
    full = Plan.full(a)
    half = Plan([LayerPlan(0), LayerPlan(1)], source=full.source)
    b = Budget.parse("0.8")
    assert not b.fits(full, a) and b.fits(half, a)
    assert Budget.parse("1").fits(full, a)
    assert Budget.parse("nonembed=0.51").fits(half, a)
    assert Budget.parse("macs=0.6").measure(half, a) < full.macs_per_token(a)


def test_bind_counts_once(tiny_llama):
    """A bound budget carries the target and the unit costs; the Budget methods wrap it."""
    a = anatomy_of(tiny_llama)
    bound = Budget.parse("0.8").bind(a)
    full = Plan.full(a)
    assert bound.full == bound.measure(full) == full.num_parameters(a) and bound.target == 0.8 * bound.full
    assert bound.costs.layers[0].mlp_channel == 3 * a.hidden_size
    half = Plan([LayerPlan(0), LayerPlan(1)], source=full.source)
    assert bound.fits(half) and not bound.fits(full)


def test_fill_and_on_budget(tiny_llama):
    """fill = measured / target; on budget within FILL_TOLERANCE below the target, never above."""
    from amoeba_plugin.budget import FILL_TOLERANCE

    a = anatomy_of(tiny_llama)
    full = Plan.full(a)
    half = Plan([LayerPlan(0), LayerPlan(1)], source=full.source)
    measured = full.num_parameters(a)
    assert FILL_TOLERANCE == 0.02
    at_full = Budget.parse("1").bind(a)
    assert at_full.fill(full) == 1.0 and at_full.on_budget(full)
    assert at_full.fill(a) == 1.0  # an anatomy counts as its full plan
    over = Budget("count", measured - 1).bind(a)
    assert over.fill(full) > 1 and not over.on_budget(full)  # above the budget: never on budget
    just_below = Budget("count", int(measured / 0.99)).bind(a)
    assert 0.98 <= just_below.fill(full) <= 1 and just_below.on_budget(full)
    far_below = Budget("count", int(measured / 0.9)).bind(a)
    assert far_below.fill(full) < 1 - FILL_TOLERANCE and not far_below.on_budget(full)
    assert far_below.on_budget(full, tolerance=0.15)
    half_cost = half.num_parameters(a, embeddings=False)
    nonembed = Budget.parse("nonembed=0.5").bind(a)
    assert nonembed.fill(half) == pytest.approx(half_cost / (0.5 * nonembed.full))
    assert Budget.parse("shape=layers:2").bind(a).on_budget(half)
    with pytest.raises(InvalidBudgetError):
        Budget.parse("shape=layers:2").bind(a).fill(half)
