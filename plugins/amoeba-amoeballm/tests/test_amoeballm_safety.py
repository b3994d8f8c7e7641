"""Data safety of AmoebaLLM bundles: the adapter and the manifest (scores) commit together, a kill at
any point of that commit is finished or undone by the next run, extraction never falls back to
"closest to the budget" on a trained bundle without scores, and extractions record their text."""
import json
import shutil

import pytest
from amoeba_amoeballm.bundle import Bundle, write_bundle
from amoeba_amoeballm.extract import export_extraction, extract
from amoeba_amoeballm.select import SelectionConfig, run_selection
from amoeba_amoeballm.smol import SMoLConfig
from amoeba_amoeballm.train import TrainConfig, train_bundle
from click.testing import CliRunner

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import get_calibration_dataset
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.models import load_model
from amoeba_plugin.pipeline import recorded_texts
from amoeba_plugin.testing import run_killed

EMBEDDED = "amoeba-tiny-sotu"
SMOL = dict(num_experts=2, rank=4, top_k=1)
TRAIN = dict(steps=2, batch_size=2, seq_len=64, pool=8, save_every=1, log_every=1, score_windows=2)
KILLED_TRAIN = """
from amoeba_amoeballm.smol import SMoLConfig
from amoeba_amoeballm.train import TrainConfig, train_bundle
train_bundle({path!r}, TrainConfig(**{train!r}), SMoLConfig(**{smol!r}), show_progress=False)
"""


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    model, tokenizer = load_model(EMBEDDED)
    anatomy = anatomy_of(model)
    windows = get_calibration_dataset(tokenizer, "sotu:train", 4, 64, 0)
    table, report = run_selection(model, tokenizer, anatomy, windows, SelectionConfig(min_layers=7, widths=(1.0, 0.5)),
                                  show_progress=False)
    report["calibration"] = "sotu:train"
    return write_bundle(tmp_path_factory.mktemp("bundles") / "selected", EMBEDDED, anatomy, table, report)


def _copy(selected, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(selected.path, path)
    return path


def _train(path, **overrides):
    return train_bundle(path, TrainConfig(**{**TRAIN, **overrides}), SMoLConfig(**SMOL), show_progress=False)


def test_kill_before_the_commit_leaves_the_old_bundle_and_the_rerun_finishes(selected, tmp_path):
    path = _copy(selected, tmp_path)
    run_killed(KILLED_TRAIN.format(path=str(path), train=TRAIN, smol=SMOL), "update-staged")
    with pytest.warns(RuntimeWarning, match="discarded"):
        bundle = Bundle.load(path)
    assert not bundle.trained and not bundle.shape_scores  # nothing changed
    summary = _train(path)  # the checkpoint holds the last step: the rerun only commits
    assert summary["resumed_from"] == 2
    bundle = Bundle.load(path)
    assert bundle.trained and set(bundle.shape_scores) == {str(s) for s in bundle.table.shapes()}
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("point", ["update-committed", "update-applying"])
def test_kill_after_the_commit_is_finished_by_the_next_open(selected, tmp_path, point):
    path = _copy(selected, tmp_path)
    run_killed(KILLED_TRAIN.format(path=str(path), train=TRAIN, smol=SMOL), point)
    with pytest.warns(RuntimeWarning, match="finished"):
        bundle = Bundle.load(path)
    assert bundle.trained and bundle.shape_scores and bundle.manifest["training"]["steps"] == 2
    with pytest.raises(AmoebaError, match="already trained"):
        _train(path)
    result = extract(path, budget="0.9")
    assert "lowest fine-tuned loss" in result.info["reason"]


def test_a_trained_bundle_without_scores_is_refused_by_extract_and_finished_by_train(selected, tmp_path):
    path = _copy(selected, tmp_path)
    _train(path)
    manifest = json.loads((path / "amoeba_bundle.json").read_text())  # the state older releases left after a kill
    manifest["shape_scores"] = None
    (path / "amoeba_bundle.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(_cli(), ["extract", str(path), "--budget", "0.9", "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no shape scores" in r.output and "Fix:" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    _train(path)
    assert Bundle.load(path).shape_scores


def test_restart_never_touches_a_directory_that_is_not_a_bundle(tmp_path):
    d = tmp_path / "mine"
    (d / "checkpoint").mkdir(parents=True)
    (d / "train_log.jsonl").write_text("keep")
    r = CliRunner().invoke(_cli(), ["amoeballm", "train", str(d), "--restart"])
    assert r.exit_code != 0 and "not an AmoebaLLM bundle" in r.output
    assert (d / "checkpoint").is_dir() and (d / "train_log.jsonl").read_text() == "keep"


def test_an_extraction_records_its_calibration_and_training_text(selected, tmp_path):
    path = _copy(selected, tmp_path)
    _train(path)
    out = export_extraction(extract(path, shape="7x0.5"), tmp_path / "small")
    texts = {(t["source"], t["role"]) for t in recorded_texts(export=out)}
    assert {("sotu:train", "calibration"), ("sotu:train", "training")} <= texts
    r = CliRunner().invoke(_cli(), ["eval", str(out), "--evaluation", "sotu:train"])
    assert r.exit_code != 0 and "calibrat" in r.output and "Fix:" in r.output


def _cli():
    from amoeba_plugin.cli.main import cli

    return cli
