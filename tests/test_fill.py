"""Budget fill: a depth plan topped up with width lands within FILL_TOLERANCE under its budget, never above."""
import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.plan import Plan
from amoeba_plugin.pruning.allocation import FILL_TOLERANCE, fill_ratio, global_width, uniform_plan, uniform_width
from amoeba_plugin.testing import FAMILIES, make_tiny

BUDGETS = ["0.8", "0.7", "0.5", "nonembed=0.8", "nonembed=0.7", "nonembed=0.5", "macs=0.6"]


def _scores(anatomy, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = [torch.randn(l.num_kv_groups, generator=g) for l in anatomy.layers]
    channels = [torch.randn(l.intermediate_size, generator=g) for l in anatomy.layers]
    return groups, channels


def _on_budget(budget, anatomy, plan):
    ratio = fill_ratio(budget, anatomy, plan)
    assert budget.fits(plan, anatomy) and 1 - FILL_TOLERANCE <= ratio <= 1.0, ratio


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("text", BUDGETS)
def test_depth_topped_up_with_width_lands_on_budget(family, text):
    anatomy = anatomy_of(make_tiny(family))
    budget = Budget.parse(text)
    bound = budget.bind(anatomy)
    full = Plan.full(anatomy)
    depth = list(range(anatomy.num_layers))
    while len(depth) > 1 and bound.measure(Plan([full.layers[i] for i in depth[:-1]], full.source)) >= bound.target:
        depth.pop()  # the deepest prefix that still needs width to fit
    groups, channels = _scores(anatomy)
    plan = global_width(anatomy, budget, groups, channels, depth=depth, top_up=True)
    assert [lp.index for lp in plan.layers] == depth
    _on_budget(budget, anatomy, plan)
    heads, width = uniform_width(anatomy, budget, depth=depth)
    _on_budget(budget, anatomy, uniform_plan(anatomy, heads, width, depth=depth))


def test_without_top_up_the_plans_stay_nested_prefixes():
    anatomy = anatomy_of(make_tiny("llama"))
    groups, channels = _scores(anatomy, 1)
    big = global_width(anatomy, Budget.parse("0.8"), groups, channels).resolved(anatomy)
    small = global_width(anatomy, Budget.parse("0.6"), groups, channels).resolved(anatomy)
    for a, b in zip(big.layers, small.layers):
        assert set(b.mlp_channels) <= set(a.mlp_channels) and set(b.kv_groups) <= set(a.kv_groups)


def test_top_up_never_lands_lower_than_the_prefix():
    anatomy = anatomy_of(make_tiny("qwen2"))
    groups, channels = _scores(anatomy, 2)
    for text in BUDGETS:
        budget = Budget.parse(text)
        plain = global_width(anatomy, budget, groups, channels)
        topped = global_width(anatomy, budget, groups, channels, top_up=True)
        assert fill_ratio(budget, anatomy, plain) <= fill_ratio(budget, anatomy, topped) <= 1.0
