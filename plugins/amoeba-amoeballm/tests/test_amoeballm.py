"""The AmoebaLLM backend end to end on the embedded model: width masks, bundle, one-for-all
fine-tuning (resume), extraction (masked == sliced == reloaded), latency budgets, lm-eval, CLI."""
import json
import shutil
import warnings

import pytest
import torch
from amoeba_amoeballm.bundle import Bundle, write_bundle
from amoeba_amoeballm.extract import (
    choose_shape,
    export_extraction,
    extract,
    latency_table,
)
from amoeba_amoeballm.select import SelectionConfig, run_selection
from amoeba_amoeballm.shapes import Shape, apply_shape
from amoeba_amoeballm.smol import SMoLConfig
from amoeba_amoeballm.train import (
    TrainConfig,
    causal_lm_loss,
    distillation_loss,
    read_log,
    sandwich,
    train_bundle,
)
from amoeba_amoeballm.width import is_nested, linear_parameters, select_widths
from click.testing import CliRunner

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import get_calibration_dataset
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError
from amoeba_plugin.models import load_model
from amoeba_plugin.plan import Plan
from amoeba_plugin.testing import make_tiny

EMBEDDED = "amoeba-tiny-sotu"
WIDTHS = (1.0, 0.75, 0.5)
SMOL = SMoLConfig(num_experts=3, rank=4, top_k=2)


def _train_config(**overrides):
    base = dict(steps=2, batch_size=2, seq_len=64, pool=16, save_every=1, log_every=1, score_windows=2)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model(EMBEDDED)
    return model, tokenizer, anatomy_of(model)


@pytest.fixture(scope="module")
def selected(embedded, tmp_path_factory):
    """A stage-1 bundle of the embedded model (depth 6..8, three widths)."""
    model, tokenizer, anatomy = embedded
    windows = get_calibration_dataset(tokenizer, "sotu:train", 4, 64, 0)
    config = SelectionConfig(min_layers=6, widths=WIDTHS)
    table, report = run_selection(model, tokenizer, anatomy, windows, config, show_progress=False)
    path = tmp_path_factory.mktemp("bundles") / "selected"
    return write_bundle(path, EMBEDDED, anatomy, table, report)


@pytest.fixture(scope="module")
def trained(selected, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "trained"
    shutil.copytree(selected.path, path)
    train_bundle(path, _train_config(), SMOL, show_progress=False)
    return Bundle.load(path)


# ---------------------------------------------------------------------- width masks
@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_width_masks_are_nested_and_width_one_is_the_full_model(allocation):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    widths = (1.0, 0.875, 0.75, 0.5)
    plans, biases = select_widths(model, anatomy, windows, widths, allocation=allocation)
    assert plans[1.0].to_dict()["layers"] == Plan.full(anatomy).to_dict()["layers"] and biases[1.0] == {}
    for big, small in zip(widths, widths[1:]):
        assert is_nested(plans[big], plans[small], anatomy), (big, small)
    full = Plan.full(anatomy).num_parameters(anatomy)
    for w in widths[1:]:
        removed = full - plans[w].num_parameters(anatomy)
        assert removed >= (1 - w) * linear_parameters(anatomy) - 2 * anatomy.hidden_size * anatomy.num_layers
        assert biases[w] and all(k.endswith(("o_proj.bias", "down_proj.bias")) for k in biases[w])
    if allocation == "uniform":
        assert all(plans[w].is_uniform(anatomy) for w in widths)


def test_global_width_keeps_whole_kv_groups_on_gqa():
    model = make_tiny("qwen2")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    plans, _ = select_widths(model, anatomy, windows, (1.0, 0.5))
    for lp in plans[0.5].resolved(anatomy).layers:
        assert all(len(q) == anatomy.layer(lp.index).queries_per_group for q in lp.query_heads)


# ---------------------------------------------------------------------- the selection table and bundle
def test_bundle_round_trip_and_shape_plans(selected, embedded):
    _, _, anatomy = embedded
    again = Bundle.load(selected.path)
    assert again.table.to_dict() == selected.table.to_dict()
    assert set(again.table.bias_tensors()) == set(selected.table.bias_tensors())
    table = again.table
    assert table.depth.depths() == [8, 7, 6] and table.widths == list(WIDTHS)
    assert table.depth.evaluations == 3 + 5 * 2  # M(M+1)/2 + (N-M)M with N=7, M=2
    plan = table.plan(Shape(6, 0.5), anatomy)
    assert [lp.index for lp in plan.layers] == table.depth.kept_layers(6) and anatomy.num_layers - 1 in table.depth.kept_layers(6)
    enc = table.encoding(Shape(6, 0.5))
    assert enc.tolist()[:8] == [float(i in table.depth.kept_layers(6)) for i in range(8)] and enc[8:].tolist() == [0, 0, 1]
    assert set(table.patch(Shape(6, 0.5), anatomy)) <= set(table.biases[0.5])
    with pytest.raises(AmoebaError, match="not available"):
        table.plan(Shape(3, 0.5), anatomy)
    with pytest.raises(AmoebaError, match="width list"):
        table.plan(Shape(8, 0.6), anatomy)
    assert Shape.parse("6x0.75") == Shape.parse("6:0.75") == Shape(6, 0.75)


def test_bundle_refuses_other_weights(selected, tmp_path):
    path = tmp_path / "moved"
    shutil.copytree(selected.path, path)
    manifest = json.loads((path / "amoeba_bundle.json").read_text())
    manifest["base"]["fingerprint"] = manifest["base"]["fingerprint"].split("-")[0] + "-0000000000000000"
    (path / "amoeba_bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(AmoebaError, match="weights"):
        Bundle.load(path).load_base()
    with pytest.raises(AmoebaError, match="not an AmoebaLLM bundle"):
        Bundle.load(tmp_path)


# ---------------------------------------------------------------------- training pieces
def test_distillation_mask_is_shifted_like_the_labels():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 5, 7), torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 5]])
    # positions 1, 2, 3 predict labels 2, 3, 4 (the scored ones); position 0 and the last do not
    want = torch.stack([-(teacher[0, t].softmax(-1) * student[0, t].log_softmax(-1)).sum() for t in (1, 2, 3)]).mean()
    assert torch.allclose(distillation_loss(student, teacher, labels), want)
    ce = causal_lm_loss(student, labels)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(student[0, 1:4], labels[0, 2:]))


def test_sandwich_is_largest_random_smallest_and_seeded(selected):
    table = selected.table
    shapes = sandwich(table, step=3, seed=0, num_random=2)
    assert shapes[0] == Shape(8, 1.0) and shapes[-1] == Shape(6, 0.5) and len(shapes) == 4
    assert shapes[1].width != shapes[2].width
    assert sandwich(table, 3, 0, 2) == shapes and any(sandwich(table, k, 0, 2) != shapes for k in range(4, 9))
    drawn = {s.depth for k in range(40) for s in sandwich(table, k, 0, 2)[1:3]}
    assert drawn == {6, 7, 8}  # full-depth narrow shapes are trained too (the official draw excludes them)
    official = {s.depth for k in range(40) for s in sandwich(table, k, 0, 2, full_depth_random=False)[1:3]}
    assert official == {6, 7}


def test_training_logs_every_subnet_and_writes_the_adapter(trained):
    log = [r for r in read_log(trained.path) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2] and all(len(r["loss"]) >= 3 for r in log)
    assert trained.trained and trained.manifest["training"]["steps"] == 2
    assert set(trained.shape_scores) == {str(s) for s in trained.table.shapes()}


def test_resume_continues_from_the_checkpoint_exactly(selected, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(selected.path, whole)
    shutil.copytree(selected.path, cut)
    cfg = _train_config(steps=4, save_every=2)
    train_bundle(whole, cfg, SMOL, show_progress=False)
    first = train_bundle(cut, cfg, SMOL, stop_after=3, show_progress=False)  # "killed" after step 3
    assert first["steps"] == 3 and not Bundle.load(cut).trained
    second = train_bundle(cut, cfg, SMOL, show_progress=False)
    assert second["resumed_from"] == 2 and second["steps"] == 4
    from safetensors.torch import load_file

    a = load_file(str(whole / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(cut / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(AmoebaError, match="other settings"):
        train_bundle(cut, _train_config(steps=6, save_every=2, lr=1e-3), SMOL, show_progress=False)


# ---------------------------------------------------------------------- extraction
def test_extracted_model_equals_the_masked_model_and_reloads(trained, embedded, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, anatomy = embedded
    ids = torch.randint(0, anatomy.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    for shape in (Shape(6, 0.5), Shape(7, 0.75), Shape(8, 1.0)):
        result = extract(trained.path, shape=str(shape))
        model, _, _ = trained.load_base()
        adapter = trained.load_adapter(model, anatomy)
        adapter.eval()
        adapter.set_shape(trained.table.encoding(shape))
        with torch.no_grad(), apply_shape(adapter.base_model, anatomy, trained.table, shape):
            masked = adapter.model(input_ids=ids).logits
        with torch.no_grad():
            sliced = result.model(input_ids=ids).logits
        assert torch.allclose(masked, sliced, atol=1e-4), (shape, (masked - sliced).abs().max())
    out = export_extraction(result, tmp_path / "out", dtype="float32")  # exact; the default keeps fp16
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, sliced, atol=1e-5)
    assert json.loads((out / "plan.json").read_text())["provenance"]["fine_tuned"] is True


def test_budget_choice_and_errors(trained, embedded):
    _, _, anatomy = embedded
    table = trained.table
    choice = choose_shape(table, anatomy, Budget.parse("nonembed=0.7"), trained.shape_scores)
    plan = table.plan(choice.shape, anatomy)
    assert Budget.parse("nonembed=0.7").fits(plan, anatomy) and "loss" in choice.reason
    unscored = choose_shape(table, anatomy, Budget.parse("nonembed=0.7"))
    assert "closest" in unscored.reason
    with pytest.raises(InvalidBudgetError, match="no shape"):
        choose_shape(table, anatomy, Budget.parse("nonembed=0.05"))
    with pytest.raises(AmoebaError, match="exactly one"):
        extract(trained.path)
    with pytest.raises(InvalidBudgetError, match="latency table"):
        choose_shape(table, anatomy, Budget.parse("latency=0.5"))


def test_latency_table_is_built_once_and_meets_latency_budgets(selected, embedded, tmp_path):
    path = tmp_path / "lat"
    shutil.copytree(selected.path, path)
    bundle = Bundle.load(path)
    model, _, anatomy = embedded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a busy test machine may well be noisy
        table = latency_table(bundle, model, anatomy, tokens=4, show_progress=False, repeats=3)
        assert latency_table(bundle, model, anatomy, tokens=4) == table  # read back, not measured again
    assert set(table["ms"]) == {str(s) for s in bundle.table.shapes()} and table["dense_ms"] > 0
    assert set(table["ratio"]) == set(table["spread"]) == set(table["ms"]) and table["repeats"] == 3
    assert table["max_spread"] == max(table["spread"].values()) >= 0
    limit = max(table["ms"].values())
    choice = choose_shape(bundle.table, anatomy, Budget.parse(f"latency={limit}ms"), latency=table)
    assert table["ms"][str(choice.shape)] <= limit
    ratio = sorted(table["ratio"].values())[len(table["ratio"]) // 2]  # the paired ratios decide latency=R
    choice = choose_shape(bundle.table, anatomy, Budget.parse(f"latency={ratio}"), latency=table)
    assert table["ratio"][str(choice.shape)] <= ratio
    # a noisy table warns whenever it is used
    stored = next((path / "latency").glob("*.json"))
    noisy = {**table, "spread": {**table["spread"], str(choice.shape): 0.5}, "max_spread": 0.5}
    stored.write_text(json.dumps(noisy))
    with pytest.warns(RuntimeWarning, match=r"vary by up to 50%.*--rebuild"):
        latency_table(bundle, model, anatomy, tokens=4)


def test_extraction_is_a_stock_model_with_uniform_widths(embedded, tmp_path):
    model, tokenizer, anatomy = embedded
    windows = get_calibration_dataset(tokenizer, "sotu:train", 2, 32, 0)
    table, report = run_selection(model, tokenizer, anatomy, windows,
                                  SelectionConfig(min_layers=7, widths=(1.0, 0.5), allocation="uniform",
                                                  bias_compensation=False), show_progress=False)
    bundle = write_bundle(tmp_path / "u", EMBEDDED, anatomy, table, report)
    result = extract(bundle.path, shape="7x0.5")
    out = export_extraction(result, tmp_path / "stock", exporter="hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


# ---------------------------------------------------------------------- the other doors
def test_lm_eval_loads_a_bundle_at_any_shape(trained):
    from amoeba_plugin.eval.lm_eval import load_model_args

    model, tokenizer, info = load_model_args(bundle=str(trained.path), shape="6x0.5")
    assert info["amoeba_load"] == "bundle" and model.config.num_hidden_layers == 6
    model, _, _ = load_model_args(bundle=str(trained.path), budget="nonembed=0.8")
    assert Plan  # the chosen shape loads too
    with pytest.raises(AmoebaError, match="unknown option"):
        load_model_args(bundle=str(trained.path), colour="red")


def test_method_in_the_common_prune_api(embedded):
    from amoeba_plugin.api import AmoebaPruner, PruningConfig

    model, tokenizer, _ = embedded
    pruner = AmoebaPruner(model, tokenizer)
    out = pruner.prune(PruningConfig(method="amoeballm", budget="nonembed=0.7", calibration_samples=2,
                                     calibration_seq_len=32,
                                     method_options={"min_layers": 7, "widths": [1.0, 0.75, 0.5]}))
    assert out.summary["fits_budget"] and "shape" in out.info


@pytest.mark.parametrize("bad, match", [({"widths": (1.0, 2.0)}, "widths"), ({"widths": (0.5, 1.0)}, "widths"),
                                        ({"depth_scorer": "accuracy"}, "unknown depth scorer"),
                                        ({"depth_scorer": "lm-eval:"}, "needs a task"),
                                        ({"allocation": "random"}, "allocation")])
def test_selection_settings_are_checked_before_any_model_loads(bad, match):
    from amoeba_plugin.api import PruningConfig, preflight

    with pytest.raises(AmoebaError, match=match):
        SelectionConfig(**bad)
    with pytest.raises(AmoebaError, match=match):  # the same dataclass is the method's options
        preflight(PruningConfig(method="amoeballm", budget="0.5", method_options=bad))


def test_cli_select_train_shapes_extract(tmp_path):
    from amoeba_plugin.cli.main import cli

    runner = CliRunner()
    bundle, out = tmp_path / "b", tmp_path / "x"
    r = runner.invoke(cli, ["amoeballm", "select", EMBEDDED, "-o", str(bundle), "--min-layers", "7",
                            "--widths", "1,3/4", "--samples", "2", "--seq-len", "32"])
    assert r.exit_code == 0, r.output
    assert "3 subnet evaluations" not in r.output and "subnet evaluations" in r.output
    r = runner.invoke(cli, ["amoeballm", "train", str(bundle), "--steps", "1", "--batch-size", "1", "--seq-len", "32",
                            "--pool", "4", "--experts", "2", "--rank", "2", "--top-k", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["amoeballm", "shapes", str(bundle)])
    assert r.exit_code == 0 and "7x0.75" in r.output, r.output
    r = runner.invoke(cli, ["extract", str(bundle), "--budget", "nonembed=0.9", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").exists() and "extracted in" in r.output
    r = runner.invoke(cli, ["extract", str(bundle), "--budget", "nonembed=0.01", "-o", str(tmp_path / "y")])
    assert r.exit_code != 0 and "no shape" in r.output and not (tmp_path / "y").exists()
    r = runner.invoke(cli, ["amoeballm", "select", EMBEDDED, "-o", str(tmp_path / "z"), "--widths", "1,1.5"])
    assert r.exit_code != 0 and "widths" in r.output and not (tmp_path / "z").exists()


@pytest.mark.slow
def test_two_process_accelerate_launch_trains_and_extracts(selected, tmp_path):
    """DDP over gloo on CPU: two processes of batch 1 compute what one process of batch 2 does."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "ddp"
    shutil.copytree(selected.path, path)
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "amoeba_amoeballm", "train", str(path), "--steps", "2", "--batch-size", "1", "--seq-len", "64",
           "--pool", "16", "--experts", "3", "--rank", "4", "--save-every", "1", "--log-every", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "AMOEBA_PROGRESS": "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout and run.stdout.count("trained 2/2") == 1
    single = tmp_path / "single"
    shutil.copytree(selected.path, single)
    train_bundle(single, _train_config(steps=2, batch_size=2, pool=16), SMoLConfig(num_experts=3, rank=4, top_k=2),
                 show_progress=False)
    two = [r["loss"] for r in read_log(path) if "loss" in r]
    one = [r["loss"] for r in read_log(single) if "loss" in r]
    assert torch.allclose(torch.tensor(two), torch.tensor(one), atol=1e-3)
    result = extract(path, shape="6x0.5")
    assert result.model.config.num_hidden_layers == 6
