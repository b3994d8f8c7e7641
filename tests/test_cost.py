"""The cost model counts exactly what Plan counts, for every family and plan type, from unit costs
computed once; a bound budget measures and fits plans as the Budget methods always did."""
import random

import pytest
import torch

import amoeba_plugin  # noqa: F401  (registers the `amoeba` architecture)
from amoeba_plugin.pruning.allocation import global_width
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget, BoundBudget
from amoeba_plugin.cost import CostModel
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import FAMILIES, make_tiny

#: every family, plus the bias and tying variants that change the count (o/down biases, tied embeddings)
VARIANTS = {**{f: (f, {}) for f in sorted(FAMILIES)},
            "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
            "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
            "mistral-mha": ("mistral", {"num_key_value_heads": 8}),
            "qwen3-mqa": ("qwen3", {"num_key_value_heads": 1})}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            family, overrides = VARIANTS[name]
            model = make_tiny(family, **overrides)
            cache[name] = (model, anatomy_of(model))
        return cache[name]
    return get


def _subset(rng, n, low=1):
    return sorted(rng.sample(range(n), rng.randint(low, n)))


def random_plan(anatomy, rng, *, channels=True, hidden=True) -> Plan:
    """A valid random plan: dropped layers, attention or MLP removed, KV groups, query heads (the same
    count per group), head channels (whole RoPE pairs; one list or one per group), MLP and hidden
    channels, output bias; ``None`` ("all of them") left in place at random."""
    layers = []
    for la in anatomy.layers:
        if rng.random() < 0.2:
            continue
        lp = LayerPlan(la.index)
        if la.has_attention and rng.random() < 0.8:
            if rng.random() < 0.1:
                lp.kv_groups = []
            else:
                groups = _subset(rng, la.num_kv_groups) if rng.random() < 0.7 else None
                n = la.num_kv_groups if groups is None else len(groups)
                lp.kv_groups = groups
                if rng.random() < 0.7:
                    k = rng.randint(1, la.queries_per_group)
                    lp.query_heads = [sorted(rng.sample(range(la.queries_per_group), k)) for _ in range(n)]
                free = not anatomy.qk_norm and la.head_channels is None and la.group_head_dims is None
                if channels and free and rng.random() < 0.6:
                    half = la.head_dim // 2

                    def pairs():
                        kept = _subset(rng, half)
                        return kept + [j + half for j in kept]
                    lp.head_channels = [sorted(pairs()) for _ in range(n)] if rng.random() < 0.5 else sorted(pairs())
        if la.has_mlp and rng.random() < 0.8:
            lp.mlp_channels = [] if rng.random() < 0.1 else _subset(rng, la.intermediate_size)
        layers.append(lp)
    keep = _subset(rng, anatomy.hidden_size) if hidden and rng.random() < 0.4 else None
    return Plan(layers, hidden_channels=keep, output_bias=rng.random() < 0.3)


def _check_counts(anatomy, plans):
    params = CostModel(anatomy)
    nonembed = CostModel(anatomy, embeddings=False)
    macs, macs_ctx = CostModel(anatomy, "macs"), CostModel(anatomy, "macs", context=13)
    for plan in plans:
        plan.validate(anatomy, check_source=False)
        assert params.measure(plan) == plan.num_parameters(anatomy)
        assert nonembed.measure(plan) == plan.num_parameters(anatomy, embeddings=False)
        assert macs.measure(plan) == plan.macs_per_token(anatomy)
        assert macs_ctx.measure(plan) == plan.macs_per_token(anatomy, context=13)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_measure_equals_plan_counts_on_random_plans(variant, models):
    _, anatomy = models(variant)
    rng = random.Random(variant)
    _check_counts(anatomy, [Plan.full(anatomy), Plan([]), *(random_plan(anatomy, rng) for _ in range(150))])


def _sliced_anatomies(models):
    """Amoeba-architecture models with per-layer shapes: heterogeneous layers, channels pruned inside
    heads (one list), per-KV-group head channels (packed rows), no attention or no MLP in a layer."""
    model, anatomy = models("llama")
    plans = [
        Plan([LayerPlan(0, kv_groups=[1], query_heads=[[0, 3]]), LayerPlan(1, mlp_channels=list(range(40))),
              LayerPlan(2, kv_groups=[]), LayerPlan(3, mlp_channels=[])]),
        Plan([LayerPlan(i, head_channels=[0, 2, 4, 6]) for i in range(4)]),
        Plan([LayerPlan(0, head_channels=[[0, 4], [1, 2, 5, 6]]), LayerPlan(1),
              LayerPlan(2, head_channels=[[0, 1, 2, 4, 5, 6], [3, 7]], query_heads=[[0, 1], [2, 3]]),
              LayerPlan(3, kv_groups=[1], query_heads=[[0, 2]], head_channels=[[1, 5]])],
             hidden_channels=list(range(0, 64, 2))),
    ]
    return [anatomy_of(slice_model(model, anatomy, p)) for p in plans]


def test_measure_equals_plan_counts_on_heterogeneous_models(models):
    for i, anatomy in enumerate(_sliced_anatomies(models)):
        assert anatomy.model_type == "amoeba"
        rng = random.Random(i)
        _check_counts(anatomy, [Plan.full(anatomy), *(random_plan(anatomy, rng) for _ in range(100))])


def _without(anatomy, index, **layer):
    """The full plan with layer ``index`` replaced by ``LayerPlan(index, **layer)`` (None: dropped)."""
    layers = [LayerPlan(l.index) for l in anatomy.layers]
    layers = [l for l in layers if l.index != index] if layer.get("drop") else \
        [LayerPlan(index, **layer) if l.index == index else l for l in layers]
    return Plan(layers)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unit_costs_are_what_removing_the_unit_saves(variant, models):
    """Each unit cost equals the drop in Plan.num_parameters (or macs_per_token) when that one unit
    goes from the full model."""
    _, anatomy = models(variant)
    for unit, count in (("parameters", lambda p: p.num_parameters(anatomy)),
                        ("macs", lambda p: p.macs_per_token(anatomy))):
        costs = CostModel(anatomy, unit)
        full = count(Plan.full(anatomy))
        assert costs.full == full and costs.base == count(Plan([]))
        assert costs.hidden_channel == full - count(Plan(Plan.full(anatomy).layers,
                                                         hidden_channels=list(range(1, anatomy.hidden_size))))
        biased = Plan(Plan.full(anatomy).layers, output_bias=True)
        assert count(biased) - full == anatomy.num_layers * sum(costs.output_bias)
        for la, lc in zip(anatomy.layers, costs.layers):
            n, qpg, half = la.num_kv_groups, la.queries_per_group, la.head_dim // 2
            assert full - count(_without(anatomy, la.index, drop=True)) == lc.whole
            assert full - count(_without(anatomy, la.index, mlp_channels=[])) == lc.mlp + la.intermediate_size * lc.mlp_channel
            assert full - count(_without(anatomy, la.index, mlp_channels=list(range(1, la.intermediate_size)))) == lc.mlp_channel
            assert full - count(_without(anatomy, la.index, kv_groups=[])) == lc.attention + sum(lc.kv_group)
            for g in range(n):
                others = [h for h in range(n) if h != g]
                if others:
                    assert full - count(_without(anatomy, la.index, kv_groups=others)) == lc.kv_group[g]
                fewer = [list(range(qpg)) if h != g else list(range(1, qpg)) for h in range(n)]
                assert full - count(_without(anatomy, la.index, query_heads=fewer)) == lc.query_head[g]
                if not anatomy.qk_norm:
                    narrow = [list(range(2 * half)) if h != g else [j for j in range(2 * half) if j % half]
                              for h in range(n)]
                    assert full - count(_without(anatomy, la.index, head_channels=narrow)) == lc.head_pair[g]
            assert lc.kv_group[0] == qpg * lc.query_head[0] + la.head_dim * costs.kv_row
            assert lc.head_pair[0] * half == lc.kv_group[0]


@pytest.mark.parametrize("variant", ["llama", "llama-biases", "qwen2", "qwen3"])
def test_linear_parameters_leave_out_norms_and_embeddings(variant, models):
    """``norms=False, embeddings=False`` counts the linears (with their biases), checked on sliced models."""
    model, anatomy = models(variant)
    costs = CostModel(anatomy, embeddings=False, norms=False)
    rng = random.Random(3)
    for plan in [Plan.full(anatomy), *(random_plan(anatomy, rng, channels=False) for _ in range(6))]:
        sliced = slice_model(model, anatomy, plan)
        linear = sum(p.numel() for name, p in sliced.named_parameters()
                     if "norm" not in name and "embed_tokens" not in name and "lm_head" not in name)
        assert costs.measure(plan) == linear


def test_bound_budget_agrees_with_the_budget_methods(models):
    _, anatomy = models("qwen2")
    rng = random.Random(5)
    plans = [Plan.full(anatomy), *(random_plan(anatomy, rng) for _ in range(30))]
    full = Plan.full(anatomy)
    for text in ("0.5", "nonembed=0.6", "macs=0.4", "count=150000"):
        budget = Budget.parse(text)
        bound = budget.bind(anatomy)
        assert isinstance(bound, BoundBudget) and bound.costs is not None
        want = {"params": 0.5 * full.num_parameters(anatomy), "nonembed": 0.6 * full.num_parameters(anatomy, embeddings=False),
                "macs": 0.4 * full.macs_per_token(anatomy), "count": 150000.0}[budget.kind]
        assert bound.target == budget.target(anatomy) == want
        for plan in plans:
            measured = {"nonembed": plan.num_parameters(anatomy, embeddings=False),
                        "macs": plan.macs_per_token(anatomy)}.get(budget.kind, plan.num_parameters(anatomy))
            assert bound.measure(plan) == budget.measure(plan, anatomy) == measured
            assert bound.fits(plan) == budget.fits(plan, anatomy) == (measured <= want)
    shape = Budget.parse("shape=layers:2").bind(anatomy)
    assert shape.costs is None and shape.fits(full)
    with pytest.raises(InvalidBudgetError, match="no scalar target"):
        shape.target
    for latency in ("latency=0.5", "latency=8ms"):
        bound = Budget.parse(latency).bind(anatomy)
        with pytest.raises(InvalidBudgetError, match="measured, not counted"):
            bound.measure(full)
        with pytest.raises(InvalidBudgetError, match="measured, not counted"):
            bound.target


def test_unknown_unit():
    with pytest.raises(AmoebaError, match="unknown cost unit"):
        CostModel(None, "flops")


def test_describe(models):
    _, anatomy = models("llama")
    d = CostModel(anatomy).describe()
    assert d["uniform"] and d["full"] == Plan.full(anatomy).num_parameters(anatomy)
    assert d["kv_group"] == [4 * 8 * 2 * 64 + 8 * 2 * 64] * 2 and d["mlp_channel"] == 3 * 64


def _global_width_by_removal(anatomy, budget, group_scores, channel_scores, output_bias):
    """global_width as it was before the cost model: each unit's cost measured as what removing the
    layer's first unit of that type saves from the full plan (a reference for the test below)."""
    full = Plan.full(anatomy)
    full.output_bias = output_bias
    base = budget.measure(full, anatomy)
    need = base - budget.target(anatomy)
    if need <= 0:
        return full

    def without(layer, **change):
        plan = Plan([LayerPlan(l.index) for l in anatomy.layers], output_bias=output_bias)
        for k, v in change.items():
            setattr(plan.layers[layer], k, v)
        return budget.measure(plan, anatomy)

    units = []
    for l in anatomy.layers:
        n, qpg = l.num_kv_groups, l.queries_per_group
        drop = without(l.index, kv_groups=list(range(1, n)), query_heads=[list(range(qpg))] * (n - 1))
        units += [(float(s), base - drop, l.index, "group", g) for g, s in enumerate(group_scores[l.index])]
        drop = without(l.index, mlp_channels=list(range(1, l.intermediate_size)))
        units += [(float(s), base - drop, l.index, "channel", c) for c, s in enumerate(channel_scores[l.index])]
    units.sort(key=lambda u: (u[0], u[2], u[3], u[4]))
    removed, count = 0.0, 0
    while count < len(units) and removed < need:
        removed += units[count][1]
        count += 1

    def build(k):
        plan = Plan.full(anatomy)
        plan.output_bias = output_bias
        for _, _, layer, kind, index in sorted(units[:k], key=lambda u: (u[2], u[3], u[4])):
            lp, la = plan.layers[layer], anatomy.layer(layer)
            if kind == "group":
                lp.kv_groups = [g for g in (range(la.num_kv_groups) if lp.kv_groups is None else lp.kv_groups) if g != index]
                lp.query_heads = [list(range(la.queries_per_group)) for _ in lp.kv_groups]
            else:
                lp.mlp_channels = [c for c in (range(la.intermediate_size) if lp.mlp_channels is None
                                               else lp.mlp_channels) if c != index]
        return plan

    plan = build(count)
    while not budget.fits(plan, anatomy) and count < len(units):
        count += 1
        plan = build(count)
    return plan


@pytest.mark.parametrize("variant", ["llama", "llama-biases", "mistral-mha", "qwen3", "qwen3-mqa"])
def test_global_width_with_unit_costs_equals_measuring_each_removal(variant, models):
    """FLAP's allocation weighs units with the cost model and makes the plans it made when it measured
    the removal of each layer's first unit, for every budget kind, with and without output biases, on
    GQA, MHA and a single KV group (whose removal also takes the attention's norm and bias)."""
    _, anatomy = models(variant)
    g = torch.Generator().manual_seed(7)
    for trial in range(3):
        groups = [torch.randn(l.num_kv_groups, generator=g) - 1.5 * (trial == 2) for l in anatomy.layers]
        channels = [torch.randn(l.intermediate_size, generator=g) for l in anatomy.layers]
        for text in ("0.5", "0.9", "nonembed=0.45", "macs=0.6", "count=200000"):
            for bias in (False, True):
                budget = Budget.parse(text)
                try:
                    want = _global_width_by_removal(anatomy, budget, groups, channels, bias)
                except InvalidBudgetError:
                    continue
                if not budget.fits(want, anatomy):
                    with pytest.raises(InvalidBudgetError):
                        global_width(anatomy, budget, groups, channels, output_bias=bias)
                    continue
                got = global_width(anatomy, budget, groups, channels, output_bias=bias)
                assert got.to_dict() == want.to_dict(), (text, bias)
