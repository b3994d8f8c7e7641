"""A damaged or misplaced AmoebaLLM bundle or checkpoint is one clear error naming the file and the fix,
found before the base model loads; outputs are checked before the selection runs."""
import json
import shutil

import pytest
from amoeba_amoeballm.bundle import Bundle, write_bundle
from amoeba_amoeballm.select import SelectionConfig, run_selection
from amoeba_amoeballm.smol import SMoLConfig
from amoeba_amoeballm.train import TrainConfig, read_checkpoint, read_log, train_bundle
from click.testing import CliRunner

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import get_calibration_dataset
from amoeba_plugin.cli.main import cli
from amoeba_plugin.errors import AmoebaError, CorruptFileError, ModelNotFoundError
from amoeba_plugin.models import load_model
from amoeba_plugin.testing import assert_one_error_line

EMBEDDED = "amoeba-tiny-sotu"
SMOL = SMoLConfig(num_experts=2, rank=2, top_k=1)
CONFIG = TrainConfig(steps=2, batch_size=2, seq_len=32, pool=8, save_every=1, log_every=1, score_windows=2)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A bundle of the embedded model with a training checkpoint after step 1 of 2 (as a killed run leaves)."""
    model, tokenizer = load_model(EMBEDDED)
    anatomy = anatomy_of(model)
    windows = get_calibration_dataset(tokenizer, "sotu:train", 2, 32, 0)
    table, report = run_selection(model, tokenizer, anatomy, windows, SelectionConfig(min_layers=7, widths=(1.0, 0.5)),
                                  show_progress=False)
    path = tmp_path_factory.mktemp("bundles") / "bundle"
    write_bundle(path, EMBEDDED, anatomy, table, report)
    train_bundle(path, CONFIG, SMOL, stop_after=1, show_progress=False)
    assert read_checkpoint(path / "checkpoint")["step"] == 1
    return path


def _copy(source, tmp_path, base=None):
    path = tmp_path / "copy"
    shutil.copytree(source, path)
    if base is not None:  # a base that cannot load: an error about it would mean the model was loaded first
        manifest = json.loads((path / "amoeba_bundle.json").read_text())
        manifest["base"]["name_or_path"] = str(base)
        (path / "amoeba_bundle.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("name, content, match", [
    ("amoeba_bundle.json", '{"format": "amoeba-amoeballm-bun', "bundle manifest .* is damaged"),
    ("selection.json", "", "bundle selection table .* is damaged .*empty"),
    ("selection.json", '{"widths": "all"}', "selection table .* is damaged"),
])
def test_a_damaged_bundle_names_the_file_and_how_to_recreate_it(checkpointed, tmp_path, name, content, match):
    path = _copy(checkpointed, tmp_path)
    (path / name).write_text(content)
    with pytest.raises(AmoebaError, match=match) as err:
        Bundle.load(path)
    assert "amoeba amoeballm select" in err.value.fix
    assert_one_error_line(CliRunner().invoke(cli, ["amoeballm", "shapes", str(path)]), name)


def test_a_bundle_whose_base_model_is_gone_names_the_bundle(checkpointed, tmp_path):
    gone = tmp_path / "moved-away-model"
    path = _copy(checkpointed, tmp_path, base=gone)
    with pytest.raises(ModelNotFoundError) as err:
        Bundle.load(path).load_base()
    assert str(path) in err.value.problem and "amoeba_bundle.json" in err.value.fix and str(gone) in err.value.fix
    assert "embedded" not in err.value.fix


@pytest.mark.parametrize("name, damage, match", [
    ("trainable.safetensors", "truncate", "training checkpoint .*trainable.safetensors is damaged"),
    ("optimizer.pt", "truncate", "optimizer state .*optimizer.pt is damaged"),
    ("state.json", "garbage", "training checkpoint state .*state.json is damaged"),
    ("state.json", '{"step": "one"}', "no step, config or smol"),
])
def test_a_damaged_checkpoint_fails_before_the_base_model_loads(checkpointed, tmp_path, name, damage, match):
    path = _copy(checkpointed, tmp_path, base=tmp_path / "no-model-here")
    file = path / "checkpoint" / name
    if damage == "truncate":
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])
    else:
        file.write_text(damage if damage.startswith("{") else '{"step": 1, "con')
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(CorruptFileError if damage != '{"step": "one"}' else AmoebaError, match=match) as err:
        train_bundle(path, CONFIG, SMOL, show_progress=False)
    assert "--restart" in err.value.fix
    assert sorted(p.name for p in path.rglob("*")) == before  # nothing created or lost


def test_a_training_log_cut_mid_line_is_read_up_to_the_cut(checkpointed, tmp_path):
    path = _copy(checkpointed, tmp_path)
    log = path / "train_log.jsonl"
    whole = read_log(path)
    log.write_text(log.read_text() + '{"step": 2, "lo')
    assert read_log(path) == whole and whole


def test_select_checks_its_output_and_calibration_before_loading(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    assert_one_error_line(run("amoeballm", "select", str(tmp_path / "no-model"), "--output", blocker / "bundle"),
              "afile is a file, not a directory")
    assert_one_error_line(run("amoeballm", "select", str(tmp_path / "no-model"), "--output", tmp_path / "b", "--calibration",
                  "nosuch:train"), "nosuch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_unknown_lm_eval_depth_scorer_task_fails_with_the_settings():
    pytest.importorskip("lm_eval")
    from amoeba_plugin.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="no lm-eval task named 'amoeba_sotu_cloze_calb'") as err:
        SelectionConfig(depth_scorer="lm-eval:amoeba_sotu_cloze_calb")
    assert "amoeba_sotu_cloze_calib" in err.value.fix
    assert SelectionConfig(depth_scorer="lm-eval:amoeba_sotu_cloze_calib").depth_scorer.endswith("calib")
