"""Importance metrics: every unit of every built-in metric, checked against direct computations
(hooked activations, least squares, finite removal), plus determinism and GQA/RoPE aggregation."""
import math

import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.calibration import collect_statistics
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.metrics import UNITS
from amoeba_plugin.metrics.loss import lm_loss
from amoeba_plugin.plan import Plan
from amoeba_plugin.plugins import get, registry
from amoeba_plugin.testing import make_tiny

BUILTIN = ("magnitude", "wanda-sp", "fluctuation", "taylor", "obs", "block-influence", "removal-loss", "random")


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(5))


def _score(name, model, anatomy, unit, windows, **options):
    metric = get("metrics", name)
    return metric.score(model, anatomy, unit, windows if metric.needs_calibration else None, **options)


def test_builtin_metrics_are_registered_with_their_sources():
    metrics = registry("metrics")
    for name in BUILTIN:
        assert name in metrics
        m = metrics[name]
        assert m.description and m.source and m.units <= set(UNITS)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("name", BUILTIN)
def test_every_unit_has_the_documented_shape(family, name, windows):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    layer = anatomy.layers[0]
    sizes = {"kv_group": layer.num_kv_groups, "query_head": layer.num_query_heads,
             "mlp_channel": layer.intermediate_size, "head_channel": layer.head_dim}
    metric = get("metrics", name)
    every = metric.score_units(model, anatomy, sorted(metric.units), windows if metric.needs_calibration else None)
    for unit, scores in every.items():
        if unit == "layer":
            assert scores.shape == (anatomy.num_layers,)
        elif unit == "hidden_channel":
            assert scores.shape == (anatomy.hidden_size,)
        else:
            assert len(scores) == anatomy.num_layers and all(s.shape == (sizes[unit],) for s in scores)
            flat = torch.cat(scores) if isinstance(scores, list) else scores
            assert torch.isfinite(flat).all() and flat.dtype == torch.float32


@pytest.mark.parametrize("name", BUILTIN)
def test_equal_seeds_and_data_give_equal_scores(name, windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    unit = "layer" if "layer" in get("metrics", name).units and name != "magnitude" else "kv_group"
    a = _score(name, model, anatomy, unit, windows, seed=3)
    b = _score(name, model, anatomy, unit, windows, seed=3)
    flat = (lambda s: torch.cat(s) if isinstance(s, list) else s)
    assert torch.equal(flat(a), flat(b))
    if name == "random":
        assert not torch.equal(flat(a), flat(_score(name, model, anatomy, unit, windows, seed=4)))


def test_unsupported_unit_and_missing_calibration_are_clear():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    with pytest.raises(AmoebaError, match="cannot score 'layer'"):
        get("metrics", "wanda-sp").score(model, anatomy, "layer", None)
    with pytest.raises(AmoebaError, match="needs calibration"):
        get("metrics", "fluctuation").score(model, anatomy, "mlp_channel", None)
    stats = collect_statistics(model, anatomy, torch.randint(0, 128, (2, 8)))
    with pytest.raises(AmoebaError, match="calibration windows"):
        get("metrics", "taylor").score(model, anatomy, "mlp_channel", stats)


# ---------------------------------------------------------------------- statistics
def _hooked_inputs(model, anatomy, windows, role):
    """Every input of ``role``'s linear in each layer, from one plain forward pass."""
    seen = {}
    handles = [model.get_submodule(l.modules[role]).register_forward_pre_hook(
        lambda m, a, i=l.index: seen.setdefault(i, []).append(a[0].reshape(-1, a[0].shape[-1]).double()))
        for l in anatomy.layers]
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    for h in handles:
        h.remove()
    return {i: torch.cat(x) for i, x in seen.items()}


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_layer_by_layer_statistics_match_a_full_forward(family, windows):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    stats = collect_statistics(model, anatomy, windows, gram=True, batch_size=4)
    for role in ("q", "o", "gate", "down"):
        for index, x in _hooked_inputs(model, anatomy, windows, role).items():
            acc = stats.layer(index).input(role)
            assert acc.count == x.shape[0]
            torch.testing.assert_close(acc.mean, x.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(acc.variance, x.var(0), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(acc.gram, x.T @ x, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    for i in range(anatomy.num_layers - 1):  # the last hidden state HF returns is after the final norm
        cos = torch.nn.functional.cosine_similarity(hidden[i].double(), hidden[i + 1].double(), dim=-1)
        assert math.isclose(stats.layer(i).block_influence, float(1 - cos.mean()), rel_tol=1e-4)


# ---------------------------------------------------------------------- each metric against its definition
def test_magnitude_aggregates_gqa_groups_and_rope_pairs():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    layer = anatomy.layers[1]
    q = get("metrics", "magnitude").score_units(model, anatomy, ("query_head", "kv_group", "head_channel"))
    heads, groups, channels = q["query_head"][1], q["kv_group"][1], q["head_channel"][1]
    w = {r: model.get_submodule(layer.modules[r]).weight.detach().abs() for r in ("q", "k", "v", "o")}
    hd, qpg = layer.head_dim, layer.queries_per_group
    for g in range(layer.num_kv_groups):
        kv = (w["k"][g * hd:(g + 1) * hd].sum() + w["v"][g * hd:(g + 1) * hd].sum())
        torch.testing.assert_close(groups[g], heads[g * qpg:(g + 1) * qpg].sum() + kv, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(heads[3], w["q"][3 * hd:4 * hd].sum() + w["o"][:, 3 * hd:4 * hd].sum(), rtol=1e-5,
                               atol=1e-4)
    assert torch.equal(channels[: hd // 2], channels[hd // 2:])  # RoPE partners share one score


def test_wanda_sp_and_fluctuation_follow_their_formulas(windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    layer = anatomy.layers[2]
    x = _hooked_inputs(model, anatomy, windows, "down")[2]
    w = model.get_submodule(layer.modules["down"]).weight.detach().double()
    wanda = (w.abs() * x.norm(dim=0)[None, :]).sum(0)
    wifv = x.var(0) * w.pow(2).sum(0)
    torch.testing.assert_close(_score("wanda-sp", model, anatomy, "mlp_channel", windows)[2].double(), wanda,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_score("fluctuation", model, anatomy, "mlp_channel", windows)[2].double(), wifv,
                               rtol=1e-4, atol=1e-7)
    xo = _hooked_inputs(model, anatomy, windows, "o")[2]
    wo = model.get_submodule(layer.modules["o"]).weight.detach().double()
    heads = (xo.var(0) * wo.pow(2).sum(0)).pow(2).reshape(layer.num_query_heads, -1).sum(1)  # FLAP squares
    torch.testing.assert_close(_score("fluctuation", model, anatomy, "query_head", windows)[2].double(), heads,
                               rtol=1e-4, atol=1e-9)


def test_obs_column_score_is_the_least_squares_cost_of_removing_the_column(windows):
    """For a column, OBS's ||W[:, j]||^2 / [H^-1]_jj is exactly the output error left after the best
    re-fit of the other columns (here checked with an explicit least-squares solve)."""
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    layer = anatomy.layers[1]
    x = _hooked_inputs(model, anatomy, windows, "down")[1]  # [tokens, in]
    w = model.get_submodule(layer.modules["down"]).weight.detach().double()
    scores = _score("obs", model, anatomy, "mlp_channel", windows, damping=1e-9)
    obs_down = get("metrics", "obs").role_scores(model, anatomy, windows, damping=1e-9)[1]["down"]
    n = x.shape[0]
    for j in (0, 5, 17):
        rest = [i for i in range(x.shape[1]) if i != j]
        target = x @ w.T
        fit = torch.linalg.lstsq(x[:, rest], target).solution
        error = (target - x[:, rest] @ fit).pow(2).sum()
        # H = 2 X^T X / n, so Phi = ||W_j||^2 / [H^-1]_jj = 2/n * (least-squares error)
        torch.testing.assert_close(obs_down[j].double(), 2 / n * error, rtol=2e-3, atol=1e-6)
    assert scores[1].shape == (layer.intermediate_size,)


def test_taylor_is_weight_times_gradient_and_leaves_the_model_untouched(windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scores = _score("taylor", model, anatomy, "mlp_channel", windows)
    assert all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    layer = anatomy.layers[0]
    model.zero_grad()
    lm_loss(model, windows, backward=True)
    terms = [(model.get_submodule(layer.modules[r]).weight, dim) for r, dim in (("gate", 1), ("up", 1), ("down", 0))]
    expected = sum((p.detach() * p.grad).abs().sum(dim) for p, dim in terms)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(scores[0], expected, rtol=1e-4, atol=1e-7)


def test_removal_loss_equals_the_loss_of_the_smaller_model(windows):
    from amoeba_plugin.surgery import slice_model

    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    scores = _score("removal-loss", model, anatomy, "layer", windows)
    full = Plan.full(anatomy)
    base = lm_loss(model, windows)
    smaller = slice_model(model, anatomy, Plan([lp for lp in full.layers if lp.index != 2], full.source))
    assert math.isclose(float(scores[2]), lm_loss(smaller, windows) - base, rel_tol=1e-4, abs_tol=1e-6)
    groups = _score("removal-loss", model, anatomy, "kv_group", windows)
    assert all(g.shape == (anatomy.layers[0].num_kv_groups,) for g in groups)


def test_block_influence_angular_option(windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    bi = _score("block-influence", model, anatomy, "layer", windows)
    angular = _score("block-influence", model, anatomy, "layer", windows, angular=True)
    assert (bi >= 0).all() and (angular >= 0).all() and (angular <= 1).all()
    assert not torch.equal(bi, angular)


def test_obs_streams_gram_matrices_one_layer_at_a_time(windows):
    """With windows, OBS turns each layer's Gram matrices into inverse diagonals as soon as the
    layer is done; the statistics it keeps hold no Gram matrix."""
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    kept = []
    stats = collect_statistics(model, anatomy, windows, gram=True, keep_gram=False,
                               on_layer=lambda la, s: kept.append(all(a.gram is not None for a in s.inputs.values())))
    assert all(kept) and not stats.gram
    assert all(a.gram is None for ls in stats.layers.values() for a in ls.inputs.values())
    from_stats = get("metrics", "obs").score(model, anatomy, "kv_group",
                                             collect_statistics(model, anatomy, windows, gram=True))
    from_windows = get("metrics", "obs").score(model, anatomy, "kv_group", windows)
    for a, b in zip(from_stats, from_windows):
        torch.testing.assert_close(a, b)


def test_removal_loss_of_a_query_head_is_that_of_its_group_in_mha(windows):
    """With one query head per KV group, removing a head is removing its group: the hook that zeroes
    one head's o_proj input must cost exactly what the soft-surgery plan without that group costs."""
    model = make_tiny("llama", num_key_value_heads=8)
    anatomy = anatomy_of(model)
    heads = _score("removal-loss", model, anatomy, "query_head", windows[:2])
    groups = _score("removal-loss", model, anatomy, "kv_group", windows[:2])
    for h, g in zip(heads, groups):
        torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-6)
