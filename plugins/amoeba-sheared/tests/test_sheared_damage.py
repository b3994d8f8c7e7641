"""Sheared runs: a damaged run directory or checkpoint is one clear error naming the file and the fix,
found before the model loads; an output that cannot be written fails before any work; a target shape's
error names the count the user wrote."""
import json
import shutil

import pytest
from amoeba_sheared.config import DataConfig, TrainConfig
from amoeba_sheared.run import prune
from amoeba_sheared.target import Shape, resolve_target
from amoeba_sheared.trainer import CHECKPOINT, LOG, read_log

from amoeba_plugin.errors import AmoebaError, CorruptFileError, InvalidBudgetError

EMBEDDED = "amoeba-tiny-sotu"
TARGET = "shape=layers:6,heads:4,kv_heads:2,intermediate:384,hidden:192"
TRAIN = TrainConfig(steps=2, batch_size=2, seq_len=32, lr=1e-3, save_every=1, log_every=1)
DATA = DataConfig(update_every=2, heldout_windows=2)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run stopped after step 1 of 2: its checkpoint is what a resume reads."""
    out = tmp_path_factory.mktemp("sheared") / "run"
    prune(EMBEDDED, out, TARGET, DATA, TRAIN, stop_after=1, show_progress=False)
    assert (out / CHECKPOINT / "state.json").is_file()
    return out


def _copy(source, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(source, path)
    return path


@pytest.mark.parametrize("name, damage, match", [
    (f"{CHECKPOINT}/trainable.safetensors", "truncate", "Sheared checkpoint .*trainable.safetensors is damaged"),
    (f"{CHECKPOINT}/optimizer.pt", "truncate", "optimizer state .*optimizer.pt is damaged"),
    (f"{CHECKPOINT}/state.json", '{"step": 1, "pro', "Sheared checkpoint state .*state.json is damaged"),
    ("run.json", "", "Sheared run settings .*run.json is damaged .*empty"),
])
def test_a_damaged_run_fails_before_the_model_loads_and_keeps_its_files(killed, tmp_path, name, damage, match):
    run = _copy(killed, tmp_path)
    file = run / name
    if damage == "truncate":
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])
    else:
        file.write_text(damage)
    before = {p: p.stat().st_size for p in run.rglob("*")}
    with pytest.raises(CorruptFileError, match=match) as err:
        prune(EMBEDDED, run, TARGET, DATA, TRAIN, show_progress=False)
    assert "--restart" in err.value.fix
    assert {p: p.stat().st_size for p in run.rglob("*")} == before  # nothing created or lost


def test_a_log_cut_mid_line_reads_up_to_the_cut(killed, tmp_path):
    run = _copy(killed, tmp_path)
    whole = read_log(run)
    (run / LOG).write_text((run / LOG).read_text() + '{"step": 2, "lo')
    assert whole and read_log(run) == whole


def test_an_output_under_a_file_fails_before_any_work(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(AmoebaError, match="afile is a file, not a directory"):
        prune(EMBEDDED, blocker / "run", TARGET, DATA, TRAIN, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_target_count_out_of_range_is_named_as_written():
    source = Shape(layers=8, heads=8, kv_heads=2, intermediate=384, hidden=192)
    with pytest.raises(InvalidBudgetError, match=r"target kv_heads=3 is outside 1\.\.2"):
        resolve_target(source, {"kv_heads": 3})
    with pytest.raises(InvalidBudgetError, match=r"target heads=12 is outside 1\.\.8"):
        resolve_target(source, {"heads": 12, "kv_heads": 2})
    assert json.loads(json.dumps(resolve_target(source, {"kv_heads": 1}).to_dict()))["heads"] == 4
