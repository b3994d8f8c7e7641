"""The search's state read before any model loads: a damaged or empty log or checkpoint is one clear
error, a resume with other settings or an unknown lm-eval fitness task fails in preflight, and the work
directory is checked for writability there too."""
import json

import pytest
import torch
from click.testing import CliRunner

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import PruningConfig, preflight
from amoeba_plugin.budget import Budget
from amoeba_plugin.cli.main import cli
from amoeba_plugin.errors import AmoebaError, CorruptFileError, UnknownNameError
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import make_tiny
from amoeba_plugin.testing import assert_one_error_line
from amoeba_searchllm.search import LOG, STATE

OPTIONS = {"preset": "smoke", "generations": 1, "fitness_windows": 4, "fitness": "loss", "tolerance": 0.1}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The work directory of a real (tiny) search, finished after generation 1."""
    path = tmp_path_factory.mktemp("search") / "work"
    model = make_tiny("llama")
    windows = torch.randint(0, 128, (12, 24), generator=torch.Generator().manual_seed(0))
    context = PruningContext(model=model, tokenizer=None, anatomy=anatomy_of(model), budget=Budget.parse("0.7"),
                             options={**OPTIONS, "checkpoint_dir": str(path)}, calibration=lambda: windows)
    get("methods", "searchllm").prune(context)
    assert (path / STATE).is_file() and (path / LOG).is_file()
    return path


def _config(work, budget="0.7", **changes):
    return PruningConfig(method="searchllm", budget=budget,
                         method_options={**OPTIONS, "checkpoint_dir": str(work), **changes})


def test_a_resume_with_the_same_settings_passes_preflight_and_other_settings_do_not(work):
    preflight(_config(work))
    preflight(_config(work, generations=3))  # more generations continue the same run
    for config, differ in ((_config(work, budget="0.6"), "budget"), (_config(work, population=9), "config"),
                           (_config(work, mask_mutation="paper_literal"), "mask_mutation"),
                           (_config(work, fitness="perplexity"), "fitness")):
        with pytest.raises(AmoebaError, match=f"other settings \\(they differ in: .*{differ}") as err:
            preflight(config)
        assert "restart" in err.value.fix
    preflight(_config(work, budget="0.6", restart=True))  # restart: the checkpoint is not resumed
    with pytest.raises(AmoebaError, match="already past generation 0"):
        preflight(_config(work, generations=0))


@pytest.mark.parametrize("content", ['{"format": "amoeba-searchllm-state", "vers', "", '{"format": "amoeba-searchllm-state", '
                                     '"version": 1, "describe": {}, "generation": "3"}'])
def test_a_damaged_checkpoint_fails_in_preflight_and_stays(work, tmp_path, content):
    copy = tmp_path / "w"
    copy.mkdir()
    (copy / STATE).write_text(content)
    with pytest.raises((CorruptFileError, AmoebaError), match=f"{copy / STATE}.*damaged"):
        preflight(_config(copy))
    assert (copy / STATE).read_text() == content


def test_an_unknown_lm_eval_fitness_task_fails_in_preflight(tmp_path):
    pytest.importorskip("lm_eval")
    with pytest.raises(UnknownNameError, match="no lm-eval task named 'amoeba_sotu_clozee'"):
        preflight(PruningConfig(method="searchllm", budget="0.7",
                                method_options={"fitness": "lm-eval:amoeba_sotu_clozee"}))


def test_a_work_directory_under_a_file_fails_in_preflight(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(AmoebaError, match="search work directory .*afile is a file"):
        preflight(PruningConfig(method="searchllm", budget="0.7", method_options={"checkpoint_dir": str(blocker / "w")}))


def test_show_on_an_empty_or_damaged_log_is_one_line(work, tmp_path):
    run = lambda *a: CliRunner().invoke(cli, ["searchllm", "show", *map(str, a)])  # noqa: E731
    shown = run(work)
    assert shown.exit_code == 0 and "2 generations (finished)" in shown.output
    for name, log, state, fragment in (
            ("empty", "", None, "is empty: no generation has finished yet"),
            ("middle", '{"generation": 0}\nnot json\n', None, "line 2 is not valid JSON"),
            ("fields", '{"when": 1}\n', None, "lines without generation"),
            ("state", (work / LOG).read_text(), "{garbage", "search checkpoint")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / LOG).write_text(log)
        if state is not None:
            (folder / STATE).write_text(state)
        assert_one_error_line(run(folder), fragment)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / LOG).write_text((work / LOG).read_text() + '{"generation": 2, "eval')
    (torn / STATE).write_text((work / STATE).read_text())
    assert run(torn).exit_code == 0  # a last line cut off mid-write is dropped
    assert json.loads((work / LOG).read_text().splitlines()[0])["generation"] == 0
