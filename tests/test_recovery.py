"""Recovery (amoeba_plugin.recovery): distillation heals a pruned model, runs resume bit for bit,
held-out text stays held out, and the CLI writes models that reload.

Fast tests use the tiny in-process models with real text: the first SOTU addresses (train split) as
training text and the first held-out ones (validation split) as held-out text, written to small files
so tokenizing them costs nothing. Slow tests use the embedded model and the shipped corpora.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import AmoebaPruner, PruningConfig
from amoeba_plugin.cli.main import cli
from amoeba_plugin.data import resolve_source
from amoeba_plugin.errors import AmoebaError, DataError
from amoeba_plugin.plan import Plan
from amoeba_plugin.recovery import RecoveryConfig, RecoveryResult, recover, update_proportions
from amoeba_plugin.recovery.config import parse_pairs
from amoeba_plugin.recovery.loop import check_text
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import make_tiny, save_tiny, tiny_tokenizer

SEQ = 32


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """``(train spec, second train spec, held-out spec)``: real SOTU text in small files."""
    root = tmp_path_factory.mktemp("recovery-text")
    sotu, _ = resolve_source("sotu:train")
    train = sotu.documents("train")
    held = sotu.documents("validation")
    (root / "train.txt").write_text("\n\n".join(train[:6]))
    (root / "other.txt").write_text("\n\n".join(train[100:104]))
    (root / "held.txt").write_text("\n\n".join(held[:2]))
    return f"file:{root / 'train.txt'}", f"file:{root / 'other.txt'}", f"file:{root / 'held.txt'}"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _plan(anatomy) -> Plan:
    """Keep 3 of 4 layers, one KV group of two, 64 of 96 MLP channels: a uniform, stock-expressible plan."""
    full = Plan.full(anatomy)
    for lp in full.layers:
        lp.kv_groups = [0]
        lp.mlp_channels = list(range(64))
    full.layers = full.layers[:3]
    return full


def _pair(arch: str = "auto", family: str = "llama"):
    teacher = make_tiny(family)
    anatomy = anatomy_of(teacher)
    student = slice_model(teacher, anatomy, _plan(anatomy), prefer=arch)
    return teacher, student


def _config(texts, **kw) -> RecoveryConfig:
    train, _, held = texts
    base = dict(tokens=8 * 4 * SEQ, seq_len=SEQ, batch_size=4, lr=3e-3, source=train, eval_source=held,
                eval_windows=4, warmup=0.0)
    return RecoveryConfig(**{**base, **kw})


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- config
def test_config_round_trip_and_checks():
    cfg = RecoveryConfig(tokens=4096, loss="mixed", lm_weight=0.3, temperature=2.0, source="sotu:train",
                         lora_rank=4, eval_every=1024, seed=3)
    again = RecoveryConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert cfg.steps == 4 and cfg.peak_lr == pytest.approx(3e-3)  # LoRA's default LR
    assert RecoveryConfig(tokens=1).steps == 1
    with pytest.raises(AmoebaError, match="tokens"):
        RecoveryConfig.from_dict({"loss": "lm"})
    with pytest.raises(AmoebaError, match="tokens must be > 0"):
        RecoveryConfig(tokens=0)
    with pytest.raises(AmoebaError, match="unknown loss"):
        RecoveryConfig(tokens=10, loss="kl")
    with pytest.raises(AmoebaError, match="unknown option"):
        RecoveryConfig.from_dict({"tokens": 10, "steps": 3})
    with pytest.raises(AmoebaError, match="proportions"):
        RecoveryConfig(tokens=10, source="sotu:train", proportions=[1, 2])


def test_recover_text_parses_mixtures_and_rides_on_pruning_config():
    pairs = parse_pairs("tokens=2048,loss=lm,source=sotu:train,file:/x.txt,proportions=1,3,lr=1e-4")
    assert pairs == {"tokens": 2048, "loss": "lm", "source": "sotu:train,file:/x.txt", "proportions": "1,3",
                     "lr": 1e-4}
    config = PruningConfig(method="uniform-magnitude", recovery="tokens=2048,loss=lm")
    assert isinstance(config.recovery, RecoveryConfig) and config.recovery.loss == "lm"
    again = PruningConfig.from_dict(json.loads(config.to_json_string()))
    assert again.recovery == config.recovery
    assert PruningConfig().recovery is None and PruningConfig().to_dict()["recovery"] is None


# ---------------------------------------------------------------------- text
def test_eval_source_overlapping_training_text_is_refused(texts):
    train, other, _ = texts
    with pytest.raises(DataError, match="eval_source 'sotu:train' is also training text"):
        check_text(RecoveryConfig(tokens=10, source="sotu:train", eval_source="sotu:train"))
    with pytest.raises(DataError, match="also training text"):
        check_text(RecoveryConfig(tokens=10, source=f"{train},{other}", eval_source=other))
    with pytest.raises(DataError, match="held out for evaluation and may not be trained on"):
        check_text(RecoveryConfig(tokens=10, source="sotu:validation"))
    teacher, student = _pair()
    with pytest.raises(DataError, match="also training text"):
        recover(student, teacher, tiny_tokenizer(), RecoveryConfig(tokens=10, source=train, eval_source=train))
    training, evaluation = check_text(RecoveryConfig(tokens=10))
    assert [str(s) for s in training] == ["sotu:train"] and str(evaluation) == "sotu:validation"


def test_update_proportions_is_the_one_copy():
    from pathlib import Path

    import amoeba_sheared.dynamic as sheared

    if Path(sheared.__file__).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        assert sheared.update_proportions is update_proportions  # the backend imports the host's
    args = ([0.2, 0.3, 0.5], [2.5, 3.0, 1.0], [2.0, 2.0, 2.0])
    assert torch.equal(sheared.update_proportions(*args), update_proportions(*args))
    new = update_proportions([0.5, 0.5], losses=[3.0, 2.0], reference=[2.0, 2.0])
    assert new[0] > new[1] and float(new.sum()) == pytest.approx(1.0)
    assert torch.allclose(update_proportions([0.5, 0.5], [1.0, 1.0], [2.0, 2.0]), torch.tensor([0.5, 0.5],
                                                                                                dtype=torch.float64))


# ---------------------------------------------------------------------- training
def test_distillation_loss_decreases(texts, tokenizer):
    teacher, student = _pair()
    before = _state(teacher)
    result = recover(student, teacher, tokenizer, _config(texts), progress=False)
    assert isinstance(result, RecoveryResult) and result.model is student
    steps = [r for r in result.log if "train_loss" in r]
    assert len(steps) == 8 and result.tokens == 8 * 4 * SEQ and result.wall_s > 0
    first, last = steps[0]["distill_loss"], sum(r["distill_loss"] for r in steps[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    held = result.heldout
    assert held[0]["step"] == 0 and held[-1]["step"] == 8 and held[-1]["heldout_loss"] < held[0]["heldout_loss"]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert all("tokens_per_s" in r for r in steps)
    record = result.record(teacher="tiny")
    assert record["sources"] == [f"{texts[0]}:text"] and record["loss"] == "distill"  # canonical name:split


def test_lm_loss_needs_no_teacher(texts, tokenizer):
    _, student = _pair()
    result = recover(student, None, tokenizer, _config(texts, loss="lm", tokens=4 * 4 * SEQ), progress=False)
    assert "distill_loss" not in result.log[-1] and result.log[-1]["train_loss"] == result.log[-1]["lm_loss"]
    with pytest.raises(AmoebaError, match="needs a teacher"):
        recover(_pair()[1], None, tokenizer, _config(texts, loss="distill"))


def test_amoeba_architecture_student_trains(texts, tokenizer):
    teacher, student = _pair(arch="amoeba", family="qwen3")
    assert student.config.model_type == "amoeba"
    before = _state(student)
    result = recover(student, teacher, tokenizer, _config(texts, loss="mixed"), progress=False)
    assert type(result.model).__name__ == "AmoebaForCausalLM"
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    held = result.heldout
    assert held[-1]["heldout_loss"] < held[0]["heldout_loss"]


def test_lora_merges_into_a_plain_model(texts, tokenizer, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    teacher, student = _pair()
    original = _state(student)
    cls = type(student)
    cfg = _config(texts, lora_rank=4, lora_alpha=8, tokens=4 * 4 * SEQ)
    result = recover(student, teacher, tokenizer, cfg, run_dir=tmp_path / "run", progress=False)
    model = result.model
    assert type(model) is cls and not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert set(model.state_dict()) == set(original)
    # the merged weights are the original ones plus scale * B @ A of the adapters the run trained
    checkpoint = next((tmp_path / "run").glob("checkpoint-*"))
    adapters = load_file(str(checkpoint / "trainable.safetensors"))
    merged_any = False
    for name, weight in model.state_dict().items():
        stem = name.removesuffix(".weight")
        a = next((v for k, v in adapters.items() if k.endswith(f"{stem}.lora_A.default.weight")), None)
        if a is None:
            assert torch.equal(weight, original[name]), name
            continue
        b = next(v for k, v in adapters.items() if k.endswith(f"{stem}.lora_B.default.weight"))
        torch.testing.assert_close(weight, original[name] + (8 / 4) * b @ a, atol=1e-6, rtol=1e-5)
        merged_any = True
    assert merged_any
    # the saved model reloads with plain from_pretrained and computes the same logits
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-6, rtol=1e-5)


class _Killed(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(texts, tokenizer, tmp_path):
    train, other, held = texts
    cfg = _config(texts, source=f"{train},{other}", proportions=[3, 1], tokens=6 * 4 * SEQ, save_every=2 * 4 * SEQ,
                  update_every=2 * 4 * SEQ, eval_every=3 * 4 * SEQ, mixture_windows=2, warmup=0.2)
    teacher, student = _pair()
    whole = recover(student, teacher, tokenizer, cfg, run_dir=tmp_path / "whole", progress=False)

    _, interrupted = _pair()

    def kill_at_step_5(record):
        if record["step"] == 5:
            raise _Killed

    with pytest.raises(_Killed):
        recover(interrupted, teacher, tokenizer, cfg, run_dir=tmp_path / "cut", progress=kill_at_step_5)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-00000004"]
    _, fresh = _pair()  # a new process: the student as it was before any training
    resumed = recover(fresh, teacher, tokenizer, cfg, run_dir=tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 4
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    strip = lambda log: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in log]  # noqa: E731
    assert strip(resumed.log) == strip(whole.log)
    assert any("proportions" in r and r["step"] > 0 for r in whole.log)  # the mixture was updated on the way
    # a finished run returns its result again at once
    again = recover(_pair()[1], teacher, tokenizer, cfg, run_dir=tmp_path / "cut", progress=False)
    assert again.resumed_from == 6 and all(torch.equal(v, again.model.state_dict()[k])
                                           for k, v in whole.model.state_dict().items())


def test_resume_refuses_other_settings(texts, tokenizer, tmp_path):
    teacher, student = _pair()
    cfg = _config(texts, tokens=4 * SEQ)
    recover(student, teacher, tokenizer, cfg, run_dir=tmp_path / "run", progress=False)
    other = _config(texts, tokens=4 * SEQ, lr=1e-2)
    with pytest.raises(AmoebaError, match=r"other settings \(lr\)"):
        recover(_pair()[1], teacher, tokenizer, other, run_dir=tmp_path / "run")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(AmoebaError, match="holds no recovery run"):
        recover(_pair()[1], teacher, tokenizer, cfg, run_dir=tmp_path / "busy")


# ---------------------------------------------------------------------- API and CLI
def test_prune_with_recovery_exports_the_healed_model(texts, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from amoeba_plugin.pipeline import calibration_texts

    train, _, held = texts
    model = make_tiny("llama")
    pruner = AmoebaPruner(model, tokenizer)
    recovery = {"tokens": 4 * 4 * SEQ, "seq_len": SEQ, "lr": 3e-3, "source": train, "eval_source": held,
                "eval_windows": 2, "loss": "lm"}  # a random tiny teacher knows no English: learn from the text
    config = PruningConfig(method="uniform-magnitude", budget="0.6", calibration=None, evaluation=held,
                           evaluation_windows=2, evaluation_seq_len=SEQ, recovery=recovery)
    out = pruner.prune(config, save_directory=tmp_path / "out", evaluate=True)
    assert out.recovery is not None and out.recovery.model is out.model
    assert out.perplexity_after < out.summary["perplexity_pruned"]
    info = json.loads((tmp_path / "out" / "amoeba_export.json").read_text())["info"]
    assert info["recovery"][0]["tokens"] == 4 * 4 * SEQ and info["data"]["recovery"][0]["sources"]
    assert calibration_texts(export=tmp_path / "out") == info["data"]["recovery"][0]["sources"]
    assert "## Recovery" in (tmp_path / "out" / "README.md").read_text()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, out.model(ids).logits, atol=1e-6, rtol=1e-5)
    with pytest.raises(AmoebaError, match="recovered weights would not be written"):
        pruner.prune(PruningConfig(method="uniform-magnitude", calibration=None, exporter="plan", recovery=recovery),
                     save_directory=tmp_path / "plan")
    with pytest.raises(DataError, match="also training text"):
        pruner.prune(PruningConfig(method="uniform-magnitude", calibration=None, evaluation=train, recovery=recovery),
                     evaluate=True)


def test_cli_prune_recover_then_recover_again(texts, tmp_path):
    from transformers import AutoModelForCausalLM

    train, _, held = texts
    save_tiny(tmp_path / "src")
    runner = CliRunner()
    spec = f"tokens={2 * 4 * SEQ},seq_len={SEQ},lr=3e-3,source={train},eval_source={held},eval_windows=2"
    result = runner.invoke(cli, ["-q", "prune", str(tmp_path / "src"), "--method", "uniform-magnitude", "--budget",
                                 "0.6", "--calibration", "none", "--no-eval", "--recover", spec,
                                 "-o", str(tmp_path / "pruned")])
    assert result.exit_code == 0, result.output
    assert "recovery:" in result.output
    result = runner.invoke(cli, ["-q", "recover", str(tmp_path / "pruned"), "--tokens", str(2 * 4 * SEQ),
                                 "--option", f"seq_len={SEQ}", "--option", f"source={train}",
                                 "--option", f"eval_source={held}", "--option", "eval_windows=2",
                                 "-o", str(tmp_path / "healed")])
    assert result.exit_code == 0, result.output  # the teacher: the source model the export records
    assert "held-out perplexity" in result.output
    info = json.loads((tmp_path / "healed" / "amoeba_export.json").read_text())
    assert info["recovered"] and len(info["info"]["recovery"]) == 2 and info["info"]["recovery"][1]["teacher"]
    card = (tmp_path / "healed" / "README.md").read_text()
    assert card.count("## Recovery") == 1 and "Run 2" in card and (tmp_path / "healed" / "plan.json").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    bad = runner.invoke(cli, ["recover", str(tmp_path / "pruned"), "--tokens", "64", "--option",
                              f"source={held}", "--option", f"eval_source={held}", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "also training text" in bad.output and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_recover_on_the_embedded_model(tmp_path):
    from transformers import AutoModelForCausalLM

    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "prune", "amoeba-tiny-sotu", "--method", "uniform-magnitude", "--budget", "0.6",
                                 "--no-eval", "-o", str(tmp_path / "pruned")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["-q", "recover", str(tmp_path / "pruned"), "--teacher", "amoeba-tiny-sotu",
                                 "--tokens", "1024", "--option", "seq_len=128", "--option", "eval_windows=4",
                                 "--run-dir", str(tmp_path / "run"), "-o", str(tmp_path / "healed")])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    assert model.config.num_hidden_layers > 0
    refused = runner.invoke(cli, ["eval", str(tmp_path / "healed"), "--evaluation", "sotu:train"])
    assert refused.exit_code == 2 and "sotu:train" in refused.output  # the recovery's training text


@pytest.mark.slow
def test_prune_recover_flag_on_the_embedded_model(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "prune", "amoeba-tiny-sotu", "--method", "uniform-magnitude", "--budget", "0.6",
                                 "--evaluation-windows", "4", "--recover", "tokens=1024,seq_len=128,eval_windows=4",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "pruned ->" in result.output and "recovered" in result.output
    info = json.loads((tmp_path / "out" / "amoeba_export.json").read_text())["info"]
    assert info["data"]["recovery"][0]["sources"] == ["sotu:train"]


_TWO_PROCESSES = '''
import os, sys, torch
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.plan import Plan
from amoeba_plugin.recovery import RecoveryConfig, recover
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import make_tiny, tiny_tokenizer
teacher = make_tiny("llama")
anatomy = anatomy_of(teacher)
plan = Plan.full(anatomy)
for lp in plan.layers:
    lp.kv_groups = [0]
    lp.mlp_channels = list(range(64))
plan.layers = plan.layers[:3]
cfg = RecoveryConfig(tokens=4 * 4 * 32, seq_len=32, batch_size=4, lr=3e-3, source=sys.argv[2], eval_source=sys.argv[3],
                     eval_windows=4, warmup=0.0)
result = recover(slice_model(teacher, anatomy, plan), teacher, tiny_tokenizer(), cfg, progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save(result.model.state_dict(), sys.argv[1])
'''


@pytest.mark.slow
def test_two_processes_compute_what_one_computes(texts, tmp_path):
    """``torchrun --nproc_per_node 2`` (what ``accelerate launch`` starts): each process trains on half
    of every batch, gloo averages the gradients; the weights match one process to float tolerance."""
    import os
    import subprocess
    import sys

    train, _, held = texts
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESSES)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), train, held], check=True, env=env,
                   timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                    str(tmp_path / "two.pt"), train, held], check=True, env=env, timeout=600)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-4, rtol=1e-4)
