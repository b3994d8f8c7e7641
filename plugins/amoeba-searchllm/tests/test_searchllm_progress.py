"""searchllm speaks from the first second: what it will do before the OBS initialisation, the expected
duration after its first fitness evaluation, through the host's progress API (quiet under -q)."""
import io
from contextlib import redirect_stderr

import torch

from amoeba_plugin import progress
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import make_tiny


def _prune(**options):
    model = make_tiny("llama")
    windows = torch.randint(0, 128, (12, 24), generator=torch.Generator().manual_seed(0))
    context = PruningContext(model=model, tokenizer=None, anatomy=anatomy_of(model), budget=Budget.parse("0.7"),
                             options={"preset": "smoke", "fitness_windows": 4, "fitness": "loss", "tolerance": 0.1,
                                      "generations": 1, "reformation": "none", **options},
                             calibration=lambda: windows)
    err = io.StringIO()
    with redirect_stderr(err):
        get("methods", "searchllm").prune(context)
    return err.getvalue()


def test_searchllm_says_what_it_will_do_and_how_long_it_will_take():
    lines = _prune().splitlines()
    assert lines[0].startswith("searchllm: OBS initialisation on 8 windows, then 16 fitness evaluations")
    assert "preset 'smoke'" in lines[0]
    expected = [line for line in lines if line.startswith("searchllm search: expected to take about ")]
    assert len(expected) == 1 and "16 fitness evaluations at" in expected[0], lines


def test_quiet_means_no_lines():
    progress.set_quiet(True)
    try:
        assert _prune() == ""
    finally:
        progress.set_quiet(False)


def test_progress_lines_in_logs_and_status_lines_stay_whole(monkeypatch):
    monkeypatch.setattr(progress, "LINE_AFTER", 0.0)
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    monkeypatch.setenv(progress.ENV, "0")  # no bar, as in a log
    err = io.StringIO()
    with progress.status("pruning", stream=err):
        with redirect_stderr(err):
            assert list(progress.progress(range(3), "steps")) == [0, 1, 2]
    text = err.getvalue().splitlines()
    assert text[0] == "pruning ..." and text[1].startswith("steps: 1/3, 0 s elapsed, about 0 s left")
    assert text[-1].startswith("pruning: done (")
