"""The Optimum-style Python API: PruningConfig, AmoebaPruner, the uniform-magnitude method, the
magnitude metric and progress events."""
import json

import pytest
import torch

from amoeba_plugin import hookimpl
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import AmoebaPruner, PruningConfig
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError, UnknownNameError
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import make_tiny, registered_plugin

NO_DATA = dict(method="uniform-magnitude", calibration=None, evaluation=None)  # host-only: no plugin method


# ---------------------------------------------------------------------- PruningConfig
def test_config_round_trip(tmp_path):
    config = PruningConfig(method="uniform-magnitude", budget="nonembed=0.6", calibration="sotu:train",
                           calibration_samples=8, seed=3, method_options={"metric": "magnitude"})
    path = config.save_pretrained(tmp_path / "cfg")
    assert path.name == "pruning_config.json"
    again = PruningConfig.from_pretrained(tmp_path / "cfg")
    assert again.to_dict() == config.to_dict()
    assert PruningConfig.from_pretrained(path).to_dict() == config.to_dict()
    assert PruningConfig.from_dict(json.loads(config.to_json_string())).budget_spec == Budget("nonembed", 0.6)


def test_config_budget_kinds_survive_exactly():
    for budget in ("0.5", "50%", "macs=0.25", "count=134515008", "shape=layers:6,heads:4", Budget("params", 0.3),
                   Budget("params", 0.3, tolerance=0.05)):
        config = PruningConfig(budget=budget, **NO_DATA)
        assert PruningConfig.from_dict(config.to_dict()).budget_spec == config.budget_spec


@pytest.mark.parametrize("budget", ["0", "1.5", "-1", "lots", "flops=0.5"])
def test_config_rejects_bad_budgets_at_construction(budget):
    with pytest.raises(InvalidBudgetError) as err:
        PruningConfig(budget=budget)
    assert "Fix:" in str(err.value)


def test_config_rejects_bad_fields(tmp_path):
    with pytest.raises(AmoebaError, match="unknown pruning config key"):
        PruningConfig.from_dict({"budgett": "0.5"})
    with pytest.raises(AmoebaError, match="calibration_samples"):
        PruningConfig(calibration_samples=0)
    with pytest.raises(AmoebaError, match="no pruning config"):
        PruningConfig.from_pretrained(tmp_path)
    (tmp_path / "pruning_config.json").write_text("{nope")
    with pytest.raises(AmoebaError, match="not valid JSON"):
        PruningConfig.from_pretrained(tmp_path)
    assert PruningConfig(calibration="none").calibration is None


# ---------------------------------------------------------------------- AmoebaPruner
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("budget", ["0.5", "0.8"])
def test_prune_meets_budget_and_is_stock_expressible(family, budget):
    from amoeba_plugin.surgery import build_config, slice_state_dict

    model = make_tiny(family)
    pruner = AmoebaPruner.from_pretrained(model)
    out = pruner.prune(PruningConfig(budget=budget, **NO_DATA))
    full = sum(p.numel() for p in model.parameters())
    kept = sum(p.numel() for p in out.model.parameters())
    assert kept / full <= float(budget)
    assert kept == out.summary["parameters"] == out.plan.num_parameters(pruner.anatomy)
    assert out.summary["fits_budget"] and out.plan.is_uniform(pruner.anatomy)
    state = slice_state_dict(model, pruner.anatomy, out.plan)
    stock = build_config(model, pruner.anatomy, out.plan, state, prefer="stock")  # raises if not expressible
    assert stock.model_type == family
    assert type(out.model).__name__ == type(model).__name__
    assert out.plan.provenance["method"] == "uniform-magnitude" and out.plan.provenance["metric"] == "magnitude"
    with torch.no_grad():
        assert out.model(torch.randint(0, 128, (1, 6))).logits.shape == (1, 6, 128)


def test_uniform_magnitude_keeps_equal_heads_per_group_and_largest_shape():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    out = AmoebaPruner(model).prune(PruningConfig(budget="0.7", **NO_DATA))
    counts = {len(q) for lp in out.plan.resolved(anatomy).layers for q in lp.query_heads}
    widths = {len(lp.mlp_channels) for lp in out.plan.resolved(anatomy).layers}
    assert len(counts) == 1 and len(widths) == 1
    h, m = counts.pop(), widths.pop()
    budget = Budget.parse("0.7")
    # one more MLP channel would not fit (the width is the largest for the chosen heads)
    if m < anatomy.layers[0].intermediate_size:
        bigger = out.plan.resolved(anatomy)
        for lp in bigger.layers:
            lp.mlp_channels = list(range(m + 1))
        assert not budget.fits(bigger, anatomy)


def test_magnitude_metric_prefers_large_weights():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    layer = anatomy.layers[1]
    with torch.no_grad():
        model.get_submodule(layer.modules["up"]).weight[7].mul_(100)
        model.get_submodule(layer.modules["q"]).weight[3 * 8:4 * 8].mul_(100)
    metric = get("metrics", "magnitude")
    assert int(metric.score(model, anatomy, "mlp_channel")[1].argmax()) == 7
    assert int(metric.score(model, anatomy, "query_head")[1].argmax()) == 3
    assert int(metric.score(model, anatomy, "kv_group")[1].argmax()) == 0  # head 3 sits in group 0
    assert metric.score(model, anatomy, "layer").shape == (4,)
    assert metric.score(model, anatomy, "hidden_channel").shape == (64,)
    out = AmoebaPruner(model).prune(PruningConfig(budget="0.6", **NO_DATA))
    lp = out.plan.resolved(anatomy).layers[1]
    assert 7 in lp.mlp_channels and 3 in lp.query_heads[0]


def test_unreachable_budget_names_the_smallest_ratio():
    with pytest.raises(InvalidBudgetError, match="depth") as err:
        AmoebaPruner(make_tiny("llama")).prune(PruningConfig(budget="0.05", **NO_DATA))
    assert "ratio" in str(err.value)


def test_prune_rejects_bad_input_before_work(tmp_path):
    pruner = AmoebaPruner(make_tiny("llama"))
    with pytest.raises(UnknownNameError):
        pruner.prune(PruningConfig(**{**NO_DATA, "method": "nope"}), save_directory=tmp_path / "a")
    with pytest.raises(InvalidBudgetError, match="shape"):
        pruner.prune(PruningConfig(budget="shape=layers:2", **NO_DATA), save_directory=tmp_path / "b")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(AmoebaError, match="not empty"):
        pruner.prune(PruningConfig(**NO_DATA), save_directory=busy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_prune_exports_with_config(tmp_path):
    from transformers import AutoModelForCausalLM

    pruner = AmoebaPruner.from_pretrained(make_tiny("qwen2"))
    out = pruner.prune(PruningConfig(budget="0.6", **NO_DATA), save_directory=tmp_path / "out")
    assert out.export_path == (tmp_path / "out").resolve()
    assert PruningConfig.from_pretrained(out.export_path).budget_spec == Budget("params", 0.6)
    loaded = AutoModelForCausalLM.from_pretrained(out.export_path)
    assert loaded.config.model_type == "qwen2"
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, out.model(ids).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directories left


def test_from_pretrained_rejects_unsupported_and_non_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from amoeba_plugin.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="gpt2"):
        AmoebaPruner.from_pretrained(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)))
    with pytest.raises(AmoebaError):
        AmoebaPruner.from_pretrained(42)


def test_calibration_needs_a_tokenizer():
    from amoeba_plugin.api import get_calibration_dataset
    from amoeba_plugin.errors import DataError

    with pytest.raises(DataError, match="tokenizer"):
        get_calibration_dataset(None, "sotu:train", 2, 16)


# ---------------------------------------------------------------------- hooks: on_plan and progress
def test_on_plan_and_progress_hooks_fire():
    from amoeba_plugin.progress import MAX_EVENTS, progress

    seen = {"plans": [], "events": []}

    class Observer:
        @hookimpl
        def amoeba_on_plan(self, plan, context):
            seen["plans"].append((plan, context["method"], str(context["budget"])))

        @hookimpl
        def amoeba_on_progress(self, event):
            seen["events"].append(event)

    with registered_plugin(Observer(), "test-observer"):
        AmoebaPruner(make_tiny("llama")).prune(PruningConfig(budget="0.8", **NO_DATA))
        assert seen["plans"] and seen["plans"][0][1:] == ("uniform-magnitude", "params=0.8")
        seen["events"].clear()
        assert sum(progress(range(1000), "count")) == sum(range(1000))
        events = [e for e in seen["events"] if e.stage == "count"]
        assert len(events) <= MAX_EVENTS + 2
        assert (events[0].step, events[-1].step, events[-1].total) == (0, 1000, 1000)
        seen["events"].clear()
        list(progress(iter(range(100)), "unknown-length"))
        assert seen["events"][-1].step == 100 and len(seen["events"]) <= 10


def test_run_records_its_text_and_refuses_to_evaluate_on_calibration_text(tmp_path, calibrated_method):
    from amoeba_plugin.errors import DataError

    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    data = {"calibration": "sotu:train", "calibration_samples": 4, "calibration_seq_len": 32,
            "evaluation_windows": 2, "evaluation_seq_len": 32}
    with pytest.raises(DataError, match="is the calibration text"):
        pruner.prune(PruningConfig(method=calibrated_method, budget="0.8", evaluation="sotu:train", **data),
                     save_directory=tmp_path / "out", evaluate=True)
    assert not (tmp_path / "out").exists()
    out = pruner.prune(PruningConfig(method=calibrated_method, budget="0.8", evaluation="brown", **data),
                       save_directory=tmp_path / "out", evaluate=True)
    record = out.plan.provenance["data"]
    assert record["calibration"] == {"source": "sotu:train", "samples": 4, "seq_len": 32, "seed": 0}
    assert record["evaluation"]["source"] == "brown:test"
    info = json.loads((tmp_path / "out" / "amoeba_export.json").read_text())["info"]
    assert info["data"] == record
    assert "calibration" not in info and "calibration" not in out.plan.provenance  # recorded once, in data
    from amoeba_plugin.pipeline import calibration_texts

    assert calibration_texts(plan=out.plan, export=tmp_path / "out") == ["sotu:train", "sotu:train"]
    assert "- Calibration data: sotu:train" in (tmp_path / "out" / "README.md").read_text()
    allowed = pruner.prune(PruningConfig(method=calibrated_method, budget="0.8", evaluation="sotu:train",
                                         allow_calibration_overlap=True, **data), evaluate=True)
    assert allowed.plan.provenance["data"]["evaluation"]["allowed_calibration_overlap"] is True


def test_a_prune_resolves_each_text_spec_once(monkeypatch, tmp_path):
    """Preflight resolves the calibration and the evaluation spec once each; the windows, the overlap
    check, the provenance record and the export all reuse those (a resolved TextSpec costs nothing)."""
    import collections

    import sys

    import amoeba_plugin.data as data

    resolve = data.resolve_source
    looked_up = collections.Counter()

    def counting(spec, purpose=None):
        if not isinstance(spec, data.TextSpec):
            looked_up[str(spec)] += 1
        return resolve(spec, purpose)

    for module in [m for name, m in sys.modules.items() if name.startswith("amoeba_plugin")]:
        if getattr(module, "resolve_source", None) is resolve:  # every module that bound the function
            monkeypatch.setattr(module, "resolve_source", counting)
    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    config = PruningConfig(method="uniform-magnitude", budget="0.8", method_options={"metric": "wanda-sp"},
                           calibration="sotu:train", calibration_samples=2, calibration_seq_len=32,
                           evaluation="brown", evaluation_windows=2, evaluation_seq_len=32)
    out = pruner.prune(config, save_directory=tmp_path / "out", evaluate=True)
    assert out.plan.provenance["data"]["calibration"]["source"] == "sotu:train"  # it did calibrate
    assert out.perplexity_before and out.perplexity_after
    assert looked_up == {"sotu:train": 1, "brown": 1}


def test_run_method_does_the_steps_around_a_method(tmp_path):
    """The host seeds, checks the budget, records method/budget/seed (and the calibration text only
    when the method asked for it) and refuses a result that is not a PruneResult with a Plan."""
    from amoeba_plugin.data import TextSpec
    from amoeba_plugin.methods import Method, PruningContext
    from amoeba_plugin.pipeline import MethodResultError, RunData, calibration_texts, run_method
    from amoeba_plugin.plan import Plan

    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    uniform = get("methods", "uniform-magnitude")
    data = RunData(calibration=TextSpec.resolve("sotu:train", "calibration"), calibration_samples=2,
                   calibration_seq_len=16, seed=5)
    windows = torch.randint(0, 128, (2, 16))

    def context(budget="0.6", **options):
        return PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse(budget),
                              options=options, seed=5, calibration=lambda: windows)

    run = run_method(uniform, context(), data)
    assert {k: run.plan.provenance[k] for k in ("method", "budget", "seed")} == \
        {"method": "uniform-magnitude", "budget": "params=0.6", "seed": 5}
    assert "data" not in run.plan.provenance and not run.calibrated  # magnitude needs no windows
    assert run.model is model and run.anatomy is anatomy and run.seconds >= 0
    assert sum(p.numel() for p in run.slice().parameters()) == run.plan.num_parameters(anatomy)

    run = run_method(uniform, context(metric="wanda-sp"), data)
    assert run.calibrated and run.plan.provenance["data"] == {
        "calibration": {"source": "sotu:train", "samples": 2, "seq_len": 16, "seed": 5}}
    assert calibration_texts(plan=run.plan) == ["sotu:train"]

    with pytest.raises(InvalidBudgetError):
        run_method(uniform, context("shape=layers:2"), data)

    class Broken(Method):
        name = "test-broken"

        def prune(self, context):
            return Plan.full(context.anatomy)  # forgot the PruneResult

    with pytest.raises(MethodResultError, match="test-broken") as err:
        run_method(Broken(), context(), data)
    assert isinstance(err.value, TypeError) and isinstance(err.value, AmoebaError)
