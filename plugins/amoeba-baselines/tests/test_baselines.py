"""The baselines plugin (plugins/amoeba-baselines): registered through the entry-point group like a
third-party plugin, each method meets the Budget, and what it plans is what the sliced model runs."""
import pytest
import torch

from amoeba_plugin import AmoebaPruner, PruningConfig
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError
from amoeba_plugin.plugins import get, owner
from amoeba_plugin.surgery import apply_soft

BASELINES = ("uniform-magnitude", "wanda-sp", "flap", "shortgpt", "random")
DATA = {"calibration": "sotu:train", "calibration_samples": 8, "calibration_seq_len": 64}


@pytest.fixture(scope="module")
def pruner():
    return AmoebaPruner.from_pretrained("amoeba-tiny-sotu")


def _prune(pruner, method, budget="0.7", **kw):
    return pruner.prune(PruningConfig(method=method, budget=budget, **{**DATA, **kw}))


def test_baselines_come_from_the_entry_point_plugin():
    for name in ("wanda-sp", "flap", "shortgpt", "random"):
        assert owner("methods", name) == "baselines"
        assert get("methods", name).__module__.startswith("amoeba_baselines")
    assert owner("methods", "uniform-magnitude") == "amoeba_plugin.builtin.methods"


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("budget", ["0.8", "macs=0.7"])
def test_each_baseline_meets_the_budget_and_soft_equals_sliced(pruner, method, budget):
    out = _prune(pruner, method, budget)
    assert out.summary["fits_budget"]
    ids = torch.randint(0, 8192, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), apply_soft(pruner.model, pruner.anatomy, out.plan, out.patch):
        masked = pruner.model(ids).logits
    with torch.no_grad():
        sliced = out.model(ids).logits
    torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-4)
    assert out.plan.provenance["method"] == method


def test_flap_allocates_globally_and_compensates_with_biases(pruner):
    out = _prune(pruner, "flap", "0.7")
    shape = out.plan.shape(pruner.anatomy)
    assert len({s["intermediate_size"] for s in shape}) > 1  # widths differ across layers
    assert out.plan.output_bias and out.patch
    assert all(name.endswith(("o_proj.bias", "down_proj.bias")) for name in out.patch)
    off = _prune(pruner, "flap", "0.7", method_options={"bias_compensation": False})
    assert off.patch is None and not off.plan.output_bias
    # the compensation keeps each output's mean over the calibration tokens: check it on one layer
    layer = next(la for la, lp in zip(pruner.anatomy.layers, out.plan.resolved(pruner.anatomy).layers)
                 if 0 < len(lp.mlp_channels) < la.intermediate_size)
    kept = out.plan.resolved(pruner.anatomy).layers[layer.index].mlp_channels
    down = pruner.model.get_submodule(layer.modules["down"])
    inputs = []
    handle = down.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        pruner.model(pruner.get_calibration_dataset("sotu:train", 8, 64, seed=0))
    handle.remove()
    x = torch.cat(inputs).double()
    w = down.weight.detach().double()
    full_mean = (x @ w.T).mean(0)
    compensated = (x[:, kept] @ w[:, kept].T).mean(0) + out.patch[f"{layer.modules['down']}.bias"].double()
    torch.testing.assert_close(compensated, full_mean, rtol=1e-4, atol=1e-5)


def test_flap_kv_groups_stay_whole_for_gqa(pruner):
    out = _prune(pruner, "flap", "0.5")
    for lp in out.plan.resolved(pruner.anatomy).layers:
        layer = pruner.anatomy.layer(lp.index)
        assert all(len(q) == layer.queries_per_group for q in lp.query_heads)


def test_shortgpt_drops_the_lowest_block_influence_layers(pruner):
    out = _prune(pruner, "shortgpt", "0.8")
    scores = out.info["layer_scores"]
    dropped = out.info["dropped_layers"]
    kept = [i for i in range(len(scores)) if i not in dropped]
    assert dropped and max(scores[i] for i in dropped) <= min(scores[i] for i in kept)
    assert [lp.index for lp in out.plan.layers] == kept


def test_random_is_seeded(pruner):
    plans = [_prune(pruner, "random", "0.7", seed=s).plan.to_dict()["layers"] for s in (1, 1, 2)]
    assert plans[0] == plans[1] and plans[0] != plans[2]


def test_wanda_sp_uses_activations(pruner):
    wanda = _prune(pruner, "wanda-sp", "0.7").plan.to_dict()["layers"]
    magnitude = _prune(pruner, "uniform-magnitude", "0.7").plan.to_dict()["layers"]
    assert wanda != magnitude  # same shape, other channels


def test_keep_layers_leaves_first_and_last_whole(pruner):
    out = _prune(pruner, "wanda-sp", "0.8", method_options={"keep_layers": [0, -1]})
    shape = out.plan.shape(pruner.anatomy)
    full = pruner.anatomy.layers[0]
    for s in (shape[0], shape[-1]):
        assert s["query_heads"] == full.num_query_heads and s["intermediate_size"] == full.intermediate_size
    assert shape[1]["intermediate_size"] < full.intermediate_size


def test_bad_options_and_budgets_are_clear(pruner):
    with pytest.raises(AmoebaError, match="unknown option"):
        _prune(pruner, "flap", method_options={"ratio": 2})
    with pytest.raises(InvalidBudgetError, match="below what 'wanda-sp' can reach"):
        _prune(pruner, "wanda-sp", "0.2")
    with pytest.raises(AmoebaError, match="needs calibration"):
        pruner.prune(PruningConfig(method="flap", budget="0.7", calibration=None))


def test_option_values_are_checked_before_the_model_loads():
    from amoeba_plugin.api import preflight

    for method, options, fragment in (("flap", {"batch_size": 0}, "batch_size must be >= 1"),
                                      ("flap", {"bias_compensation": "maybe"}, "is not a bool"),
                                      ("shortgpt", {"angular": 2}, "is not a bool"),
                                      ("wanda-sp", {"keep_layers": "first"}, "keep_layers")):
        with pytest.raises(AmoebaError, match=fragment):
            preflight(PruningConfig(method=method, budget="0.7", method_options=options))
    flap = get("methods", "flap")
    assert flap.build_options({"bias_compensation": "false", "batch_size": "4"}).to_dict() == {
        "metric": "fluctuation", "bias_compensation": False, "batch_size": 4}
    assert get("methods", "wanda-sp").default_options == {"metric": "wanda-sp", "keep_layers": []}
    assert get("methods", "random").default_options["metric"] == "random"


def test_flap_export_reloads_with_identical_logits(pruner, tmp_path):
    from transformers import AutoModelForCausalLM

    out = pruner.prune(PruningConfig(method="flap", budget="0.7", export_dtype="float32", **DATA),
                       save_directory=tmp_path / "flap")  # float32: exact (the default keeps the source fp16)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "flap").eval()
    ids = torch.randint(0, 8192, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, out.model(ids).logits, rtol=1e-5, atol=1e-5)
