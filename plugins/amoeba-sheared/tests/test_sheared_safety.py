"""Data safety of Sheared runs: --restart deletes only a Sheared run of the same stage, a kill at a
checkpoint or export rename resumes, killed in-process runs leave no scratch, and the exported model
records the text it trained on so evaluation refuses it."""
import json
import tempfile

import pytest
from amoeba_sheared.config import DataConfig, TrainConfig
from amoeba_sheared.run import prune
from click.testing import CliRunner

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.pipeline import recorded_texts
from amoeba_plugin.testing import run_killed

EMBEDDED = "amoeba-tiny-sotu"
TARGET = "shape=layers:6,heads:4,kv_heads:2,intermediate:384,hidden:192"
SMALL = ["--steps", "2", "--batch-size", "2", "--seq-len", "64", "--save-every", "1", "--log-every", "1",
         "--update-every", "1", "--heldout-windows", "2"]


def _cli():
    from amoeba_plugin.cli.main import cli

    return cli


def _foreign(tmp_path):
    """A directory that holds no Sheared run but the names a run writes."""
    d = tmp_path / "mine"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_text("precious")
    (d / "checkpoint").mkdir()
    (d / "log.jsonl").write_text("{}\n")
    (d / "notes.txt").write_text("keep")
    return d


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("command", ["prune", "train"])
def test_restart_refuses_a_directory_that_holds_no_sheared_run(tmp_path, command):
    d = _foreign(tmp_path)
    before = _files(d)
    args = ["sheared", command, EMBEDDED, "-o", str(d), "--restart", *SMALL]
    args += ["--target", TARGET] if command == "prune" else ["--constant"]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code != 0 and "holds no Sheared run" in r.output and "Fix:" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert _files(d) == before and (d / "model" / "weights.bin").read_text() == "precious"


def test_restart_refuses_a_run_of_the_other_stage_and_a_fake_marker(tmp_path):
    d = _foreign(tmp_path)
    (d / "run.json").write_text(json.dumps({"stage": "pretraining", "model": "x", "train": {}, "data": {}}))
    before = _files(d)
    with pytest.raises(AmoebaError, match="not a pruning run"):
        prune(EMBEDDED, d, TARGET, DataConfig(), TrainConfig(steps=2), restart=True, show_progress=False)
    (d / "run.json").write_text(json.dumps({"name": "someone else's run.json"}))
    with pytest.raises(AmoebaError, match="holds no Sheared run"):
        prune(EMBEDDED, d, TARGET, DataConfig(), TrainConfig(steps=2), restart=True, show_progress=False)
    assert _files(d) == before


KILLED_PRUNE = """
from amoeba_sheared.config import DataConfig, TrainConfig
from amoeba_sheared.run import prune
prune({model!r}, {out!r}, {target!r}, DataConfig(update_every=1, heldout_windows=2),
      TrainConfig(steps=2, batch_size=2, seq_len=64, save_every=1, log_every=1), show_progress=False)
"""


def test_a_kill_between_the_checkpoint_renames_resumes_and_restart_then_works(tmp_path):
    out = tmp_path / "run"
    # the second checkpoint replaces the first: killed after the old one moved aside, before the new one is in place
    run_killed(KILLED_PRUNE.format(model=EMBEDDED, out=str(out), target=TARGET), "directory-old-moved")
    assert not (out / "checkpoint").exists() and any(p.name.startswith(".checkpoint.") for p in out.iterdir())
    with pytest.warns(RuntimeWarning, match="interrupted"):
        summary = prune(EMBEDDED, out, TARGET, DataConfig(update_every=1, heldout_windows=2),
                        TrainConfig(steps=2, batch_size=2, seq_len=64, save_every=1, log_every=1), show_progress=False)
    assert summary["resumed_from"] == 2 and summary["finished"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    # the finished model records what it trained on: evaluation on it is refused in one line
    texts = {(t["source"], t["role"]) for t in recorded_texts(export=out / "model")}
    assert {("sotu:train", "training"), ("brown-split:train", "training"), ("moby-dick-split:train", "training")} <= texts
    for text in ("sotu:train", "brown:test", "moby-dick:test"):  # the whole corpora hold the trained documents
        r = CliRunner().invoke(_cli(), ["eval", str(out / "model"), "--evaluation", text])
        assert r.exit_code != 0 and "trained on" in r.output and "Fix:" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1

    # --restart on its own run of the same stage is allowed
    summary = prune(EMBEDDED, out, TARGET, DataConfig(update_every=1, heldout_windows=2),
                    TrainConfig(steps=1, batch_size=2, seq_len=64, save_every=1, log_every=1), restart=True,
                    show_progress=False)
    assert summary["resumed_from"] == 0 and summary["finished"]


KILLED_METHOD = """
from amoeba_plugin.api import AmoebaPruner, PruningConfig
pruner = AmoebaPruner.from_pretrained({model!r})
pruner.prune(PruningConfig(method="sheared", budget="nonembed=0.5", calibration_samples=4, calibration_seq_len=64,
                           method_options={{"steps": 1, "batch_size": 2}}))
"""


def test_scratch_of_a_killed_in_process_run_is_removed_by_the_next_one(tmp_path, monkeypatch):
    from amoeba_plugin.export import scratch_directory

    run_killed(KILLED_METHOD.format(model=EMBEDDED), "directory-written", TMPDIR=str(tmp_path))
    left = [p for p in tmp_path.iterdir() if p.name.startswith("amoeba-sheared-")]
    assert len(left) == 1 and (left[0] / "run").exists() or len(left) == 1
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_directory("sheared"):
        pass
    assert [p for p in tmp_path.iterdir() if p.name.startswith("amoeba-sheared-")] == []


def test_method_trained_on_domains_records_them_and_a_pruned_copy_inherits_them(tmp_path):
    from amoeba_plugin.api import AmoebaPruner, PruningConfig

    pruner = AmoebaPruner.from_pretrained(EMBEDDED)
    config = PruningConfig(method="sheared", budget="nonembed=0.5", calibration_samples=4, calibration_seq_len=64,
                           method_options={"steps": 1, "batch_size": 2, "seq_len": 64, "dynamic": False,
                                           "domains": ["brown=brown-split:train,brown-split:validation",
                                                       "moby-dick=moby-dick-split:train,moby-dick-split:validation"]})
    out = pruner.prune(config, save_directory=tmp_path / "m")
    seen = {(t["source"], t["role"]) for t in recorded_texts(export=tmp_path / "m")}
    assert {("brown-split:train", "training"), ("moby-dick-split:train", "training")} <= seen
    again = AmoebaPruner.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(AmoebaError, match="trained on"):  # brown:test holds the documents brown-split:train trained on
        again.prune(PruningConfig(method="uniform-magnitude", budget="0.9", evaluation="brown:test"), evaluate=True)
    assert out.plan.provenance["data"]["seen"]
