"""The search's departures from the paper: warm starts from a plan, budget repair, the reformed-fitness
proxy, reformation with an intercept, and the final plan's fill of the budget."""
import numpy as np
import pytest
import torch

import amoeba_plugin  # noqa: F401
from amoeba_plugin.budget import Budget
from amoeba_plugin.calibration import SITES, collect_statistics
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.plan import LayerPlan, Plan, source_info
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.reformation import output_error, reformation_patch, with_intercept
from amoeba_plugin.testing import assert_soft_equals_sliced
from amoeba_searchllm.init import budget_space, initial_candidate, unit_saliency
from amoeba_searchllm.operators import Rates, Variation
from amoeba_searchllm.proxy import ReformProxy, augmented_gram, refit_with_bias
from amoeba_searchllm.repair import repair
from amoeba_searchllm.warm import candidate_from_plan, flap_plan

# tiny models: 4 layers, hidden 64, 8 query heads in 2 KV groups, head_dim 8 (4 RoPE pairs), MLP 96


@pytest.fixture(scope="module")
def stats(tiny, windows):
    model, anatomy = tiny
    return collect_statistics(model, anatomy, windows[:8], gram=True, sites=SITES)


def _context(model, anatomy, windows, budget="0.7", **options):
    return PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse(budget),
                          options={"preset": "smoke", "fitness_windows": 4, "fitness": "loss", **options},
                          calibration=lambda: windows)


def _fill(plan, anatomy, budget):
    bound = Budget.parse(budget).bind(anatomy)
    return bound.measure(plan) / bound.target


def test_a_plan_becomes_a_genome_and_back(tiny):
    model, anatomy = tiny
    space, cost, *_ = budget_space(anatomy, Budget.parse("0.7"))
    plan = Plan([LayerPlan(0, kv_groups=[1], mlp_channels=list(range(0, 96, 2))),
                 LayerPlan(1, head_channels=[[0, 2, 4, 6], [1, 5]], mlp_channels=[]),
                 LayerPlan(3, kv_groups=[], mlp_channels=list(range(50)))], source=source_info(anatomy))
    c = candidate_from_plan(plan, anatomy, space)
    assert c.layers == [0, 1, 3]
    assert c.pair_counts()[0] == [0, 4] and c.pair_counts()[1] == [2, 1] and c.pair_counts()[3] == [0, 0]
    back = c.to_plan(anatomy)
    assert back.resolved(anatomy).to_dict()["layers"] == plan.resolved(anatomy).to_dict()["layers"]
    # the genome's cost is the plan's exact count, removed groups and MLPs included
    assert c.cost(cost) == Budget.parse("0.7").bind(anatomy).measure(plan)
    heads = Plan([LayerPlan(0, query_heads=[[0, 1], [0, 1]])], source=source_info(anatomy))
    with pytest.raises(AmoebaError, match="query heads inside KV group"):
        candidate_from_plan(heads, anatomy, space)


def test_the_flap_warm_start_is_flaps_plan(tiny, stats):
    model, anatomy = tiny
    space, cost, *_ = budget_space(anatomy, Budget.parse("0.5"), output_bias=True)
    plan = flap_plan(model, anatomy, Budget.parse("0.5"), stats, output_bias=True)
    c = candidate_from_plan(plan, anatomy, space)
    assert c.cost(cost) == Budget.parse("0.5").bind(anatomy).measure(plan) <= cost.target


def test_warm_start_from_a_plan_file(tiny, windows, tmp_path):
    model, anatomy = tiny
    # a plan at 70% that is not the uniform start: layer 2 loses its second KV group and half its MLP
    bound = Budget.parse("0.7").bind(anatomy)
    width = 96
    plan = None
    while width > 1:  # the widest uniform MLP that, with layer 2's group removed, fits the budget
        layers = [LayerPlan(i, mlp_channels=list(range(width))) for i in range(4)]
        layers[2].kv_groups = [0]
        plan = Plan(layers, source=source_info(anatomy))
        if bound.fits(plan):
            break
        width -= 1
    assert bound.fits(plan)
    path = plan.save(tmp_path / "plan.json")
    method = get("methods", "searchllm")
    result = method.prune(_context(model, anatomy, windows, warm_start=str(path), search=False,
                                   reformation="none", fitness_reform="none", repair=False))
    starts = result.info["starts"]
    warm_key = candidate_from_plan(plan, anatomy, budget_space(anatomy, Budget.parse("0.7"))[0]).key()
    assert len(starts) == 2 and warm_key in starts
    assert result.info["best"]["fitness"] == min(starts.values())  # the better start wins
    with pytest.raises(AmoebaError, match="warm_start"):
        method.prune(_context(model, anatomy, windows, warm_start=str(tmp_path / "missing.json")))


def test_repair_brings_every_child_into_the_window(tiny, windows):
    model, anatomy = tiny
    space, cost, ratio, pairs, channels = budget_space(anatomy, Budget.parse("0.6"), attention_range=(0.25, 1),
                                                       mlp_range=(0.1, 1), min_depth=3)
    saliency = unit_saliency(model, anatomy, windows[:4])
    start = initial_candidate(space, saliency, pairs, channels)
    variation = Variation(space, influence=saliency.influence)
    rng = np.random.default_rng(0)
    low, high = cost.target * 0.98, cost.target
    outside = repaired = 0
    for _ in range(200):
        child = variation.mutate(start, Rates(0.5, 0.5, 0.3), rng)
        if low <= child.cost(cost) <= high:
            continue
        outside += 1
        fixed = repair(child, space, cost, low, high, saliency.attention, saliency.mlp)
        if fixed is not None:
            repaired += 1
            assert low <= fixed.cost(cost) <= high
            assert fixed.layers == child.layers  # depth is the genome's decision
            for l in fixed.layers:
                assert all(m.sum() > 0 for m in fixed.attention[l]) and fixed.mlp[l].sum() > 0
    assert outside > 100 and repaired >= 0.9 * outside


def test_the_search_repairs_instead_of_dropping(tiny, windows):
    model, anatomy = tiny
    method = get("methods", "searchllm")
    paper = method.prune(_context(model, anatomy, windows, repair=False, warm_start="none", fitness_reform="none",
                                  reformation="none", tolerance=0.01))
    ours = method.prune(_context(model, anatomy, windows, reformation="none", tolerance=0.01))
    assert ours.info["repair"] and ours.info["evaluated"] > paper.info["evaluated"]


def test_the_fitness_proxies_lower_the_layer_output_error(tiny, stats):
    model, anatomy = tiny
    layer = anatomy.layer(1)
    w = model.get_submodule(layer.modules["down"]).weight
    acc = stats.layer(1).input("down")
    kept = list(range(0, 96, 3))
    gram_aug = augmented_gram(acc)
    wk, b = refit_with_bias(w, None, gram_aug, kept, damping=0.0)
    augmented, _ = with_intercept(w, None, acc)
    k = kept + [w.shape[1]]
    dropped = output_error(augmented, gram_aug, k)
    refit = output_error(augmented, gram_aug, k, torch.cat([wk, b[:, None]], 1))
    bias_only = torch.cat([w[:, kept], (w.double()[:, [i for i in range(96) if i not in kept]]
                                       @ acc.mean[[i for i in range(96) if i not in kept]]).float()[:, None]], 1)
    compensated = output_error(augmented, gram_aug, k, bias_only)
    assert refit < compensated < dropped
    # each mode patches what it should; the refit patch is cached by mask
    plan = Plan([LayerPlan(i, mlp_channels=kept) for i in range(4)], source=source_info(anatomy))
    assert set(ReformProxy(model, anatomy, stats, "bias").patch(plan)) == {
        f"{anatomy.layer(i).modules['down']}.bias" for i in range(4)}
    proxy = ReformProxy(model, anatomy, stats, "refit")
    first = proxy.patch(plan)
    second = proxy.patch(plan)
    assert proxy.misses == 4 and proxy.hits == 4 and all(torch.equal(first[k], second[k]) for k in first)
    assert ReformProxy(model, anatomy, stats, "none").patch(plan) == {}


@pytest.mark.parametrize("mode", ["none", "bias", "refit"])
def test_the_fitness_option(tiny, windows, mode):
    model, anatomy = tiny
    result = get("methods", "searchllm").prune(_context(model, anatomy, windows, fitness_reform=mode,
                                                        reformation="none"))
    assert result.info["fitness_reform"] == mode
    assert (result.info["proxy_cache"]["misses"] > 0) == (mode == "refit")


def test_reformation_with_an_intercept_fits_better_and_slices_exactly(tiny, windows):
    model, anatomy = tiny
    plan = Plan([LayerPlan(i, head_channels=[[0, 1, 4, 5], [2, 3, 6, 7]], mlp_channels=list(range(0, 96, 2)))
                 for i in range(4)], source=source_info(anatomy), output_bias=True)
    plain, with_bias = {}, {}
    # on the same (dense) inputs, undamped, one more regressor can only lower each layer's error
    reformation_patch(model, anatomy, plan, windows[:8], report=plain, inputs="dense", damping=0.0)
    reformation_patch(model, anatomy, plan, windows[:8], report=with_bias, inputs="dense", damping=0.0, bias=True)
    assert all(with_bias[k]["reformed"] <= plain[k]["reformed"] + 1e-6 for k in plain)
    patch = reformation_patch(model, anatomy, plan, windows[:8], bias=True)
    assert any(k.endswith(".bias") for k in patch)
    assert_soft_equals_sliced(model, anatomy, plan, windows[:2], patch=patch)


@pytest.mark.parametrize("budget", ["0.7", "0.5"])
def test_the_final_plan_fills_the_budget(tiny, windows, budget):
    model, anatomy = tiny
    result = get("methods", "searchllm").prune(_context(model, anatomy, windows, budget=budget))
    assert result.plan.output_bias
    assert 0.98 <= _fill(result.plan, anatomy, budget) <= 1.0
    assert_soft_equals_sliced(model, anatomy, result.plan, windows[:2], patch=result.patch)
