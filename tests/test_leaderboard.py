"""benchmarks.leaderboard on the embedded tiny model: two cheap methods, one budget, few windows, training-free.

The calibration text and the second held-out source are small files (tokenizing the big corpora is
what would make this slow); ``test-undershoot`` is uniform-magnitude told to use 90% of its budget, so
its row must come out flagged off budget and still be in the table.
"""
import json
import math
from collections import Counter
from dataclasses import replace

import pytest

from amoeba_plugin import hookimpl
from amoeba_plugin.budget import Budget
from amoeba_plugin.methods import Method
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import registered_plugin
from benchmarks import leaderboard as lb

CALLS: Counter = Counter()
WORDS = ["the", "nation", "congress", "people", "year", "government", "states", "country", "war", "peace", "law",
         "union", "trade", "public", "great", "must", "will", "new", "world", "time", "free", "work"]


class UndershootMethod(Method):
    """uniform-magnitude at 90% of the budget it is given: lands 10% below, so off budget."""

    name = "test-undershoot"
    capabilities = frozenset({"width"})

    def prune(self, context):
        CALLS[self.name] += 1
        smaller = Budget(context.budget.kind, context.budget.value * 0.9)
        return get("methods", "uniform-magnitude").prune(replace(context, budget=smaller))


class UndershootPlugin:
    @hookimpl
    def amoeba_register_methods(self, register):
        register(UndershootMethod())


@pytest.fixture(scope="module", autouse=True)
def plugin():
    with registered_plugin(UndershootPlugin(), "test-leaderboard"):
        yield


def _text_file(path, shift):
    path.write_text("\n\n".join(" ".join(WORDS[(i * 7 + j + shift) % len(WORDS)] for j in range(60)) + "."
                                for i in range(30)))
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    return _text_file(folder / "calibration.txt", 0), _text_file(folder / "heldout.txt", 3)


def argv(texts, out, *extra):
    calibration, heldout = texts
    return ["--model", "amoeba-tiny-sotu", "--methods", "uniform-magnitude,test-undershoot", "--budgets", "0.5",
            "--regimes", "free", "--eval-sources", f"sotu:validation,file:{heldout}", "--eval-windows", "2",
            "--eval-seq-len", "32", "--calibration", f"file:{calibration}", "--calibration-samples", "2",
            "--calibration-seq-len", "32", "--decode-tokens", "2", "--prompt-tokens", "8", "--decode-repeats", "1",
            "--threads", "1", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def first(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("board") / "run"
    CALLS.clear()
    rc = lb.main(argv(texts, out))
    return {"rc": rc, "out": out, "data": json.loads((out / "results.json").read_text()), "calls": Counter(CALLS)}


def test_results_json_structure_and_geo_mean(first, texts):
    assert first["rc"] == 0
    data = first["data"]
    assert data["format"] == lb.RESULTS_FORMAT
    assert {"settings", "machine", "versions", "rows", "command"} <= set(data)
    settings = data["settings"]
    assert settings["regimes"] == ["free"] and settings["budgets"] == ["params=0.5"]
    assert settings["recovery"] is None and settings["fill_tolerance"] == 0.02
    assert settings["eval_sources"] == ["sotu:validation", f"file:{texts[1]}"]
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"dense", "uniform-magnitude", "test-undershoot"}
    for row in rows.values():
        assert row["status"] == "ok", row.get("error")
        ppl = list(row["perplexity"].values())
        assert len(ppl) == 2
        assert row["ppl_geo_mean"] == pytest.approx(math.sqrt(ppl[0] * ppl[1]))
        assert row["decode_tokens_per_s"] > 0
    for name in ("uniform-magnitude", "test-undershoot"):
        row = rows[name]
        assert row["regime"] == "free" and row["key"].endswith("|free")
        assert row["parameters_ratio"] <= 0.5 and row["macs_ratio"] < 1
        assert row["fill"] == pytest.approx(row["parameters"] / (0.5 * rows["dense"]["parameters"]), rel=1e-3)
        assert row["export_architecture"] in ("stock", "amoeba") and row["decode_speedup"] > 0
        assert row["dense_decode_tokens_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["prune_seconds"] >= 0
    assert rows["uniform-magnitude"]["on_budget"] is True
    assert rows["test-undershoot"]["on_budget"] is False and rows["test-undershoot"]["fill"] < 0.98
    for plot in lb.PLOTS:
        assert (first["out"] / plot).stat().st_size > 0


def test_markdown_sorted_best_and_off_budget(first):
    md = (first["out"] / "results.md").read_text()
    assert "## params=0.5 — training-free" in md
    section = md.split("## params=0.5 — training-free", 1)[1]
    table = [line for line in section.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(table) == 2  # both rows shown, the off-budget one too
    rows = {r["method"]: r for r in first["data"]["rows"]}
    order = sorted(("uniform-magnitude", "test-undershoot"), key=lambda m: rows[m]["ppl_geo_mean"])
    assert [line.split(" | ")[1] for line in table] == order  # sorted by the geometric mean
    undershoot = next(line for line in table if "test-undershoot" in line)
    assert "**off**" in undershoot and "◀ best" not in undershoot  # off budget: flagged, never best
    assert "◀ best" in next(line for line in table if "uniform-magnitude" in line)


def test_markdown_summary_of_the_best_per_plugin(first):
    md = (first["out"] / "results.md").read_text()
    rows = {r["method"]: r for r in first["data"]["rows"]}
    # uniform-magnitude is the host's own method: a baseline; test-undershoot's plugin has no on-budget row
    assert "| budget | regime | baselines | test-leaderboard |" in md
    assert (f"| params=0.5 | training-free | {lb._fmt_ppl(rows['uniform-magnitude']['ppl_geo_mean'])} "
            "(uniform-magnitude) | — |") in md


def test_plugin_summary_divides_by_the_best_baseline():
    def row(method, plugin, ppl, on_budget=True, budget="params=0.5", regime="free"):
        return {"method": method, "label": method, "plugin": plugin, "ppl_geo_mean": ppl, "status": "ok",
                "on_budget": on_budget, "budget": budget, "regime": regime}
    rows = [row("flap", "baselines", 200.0), row("random", "amoeba_plugin.builtin.methods", 100.0, on_budget=False),
            row("shortgpt", "baselines", 400.0), row("mine", "mine", 150.0), row("mine2", "mine", 120.0),
            row("mine", "mine", 90.0, regime="recovered"), row("flap", "baselines", 100.0, regime="recovered")]
    lines = lb.plugin_summary(rows, ["params=0.5"], ["free", "recovered"])
    assert "| baselines | mine |" in lines[3]
    assert lines[-2:] == ["| params=0.5 | training-free | 200.00 (flap) | 120.00 (mine2), 0.60× |",
                          "| params=0.5 | after recovery | 100.00 (flap) | 90.00 (mine), 0.90× |"]
    assert lb.plugin_summary(rows[:3], ["params=0.5"], ["free"]) == []  # baselines alone: nothing to compare


def test_resume_skips_recorded_rows(first, texts):
    assert first["calls"]["test-undershoot"] == 1
    CALLS.clear()
    assert lb.main(argv(texts, first["out"])) == 0
    assert CALLS["test-undershoot"] == 0  # recorded: not run again
    again = json.loads((first["out"] / "results.json").read_text())
    assert [(r["key"], r["finished"]) for r in again["rows"]] == [(r["key"], r["finished"])
                                                                  for r in first["data"]["rows"]]
    assert first["data"]["commands"] == [first["data"]["command"]]
    assert again["commands"] == [first["data"]["command"]]  # the same command again is not listed twice
    assert "Commands that wrote these rows" in (first["out"] / "results.md").read_text()


def test_start_up_errors(tmp_path, texts, capsys):
    assert lb.main(argv(texts, tmp_path / "a", "--regimes", "free,cooked")) == 2
    assert "--regimes" in capsys.readouterr().err
    assert lb.main(argv(texts, tmp_path / "b", "--method-options", "flap:metric=fluctuation")) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_recovery_may_not_train_on_held_out_text(tmp_path, texts, capsys):
    pytest.importorskip("amoeba_plugin.recovery")
    assert lb.main(argv(texts, tmp_path / "r", "--regimes", "free,recovered", "--recovery",
                        f"tokens=256,source=file:{texts[1]}")) == 2
    assert "which --eval-sources holds out" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_pareto_front():
    points = [(0.5, 10.0), (0.6, 8.0), (0.7, 9.0), (0.8, 5.0), (0.5, 12.0)]
    assert lb.pareto(points, higher_x_better=False) == [(0.5, 10.0), (0.6, 8.0), (0.8, 5.0)]
    assert lb.pareto([(1.0, 5.0), (1.5, 6.0), (1.2, 7.0)], higher_x_better=True) == [(1.0, 5.0), (1.5, 6.0)]


@pytest.mark.slow
def test_recovered_regime(tmp_path, texts):
    """After the recovery branch is merged: the recovered row carries the plan's numbers and is evaluated again."""
    pytest.importorskip("amoeba_plugin.recovery")
    out = tmp_path / "rec"
    rc = lb.main(argv(texts, out, "--methods", "uniform-magnitude", "--regimes", "free,recovered",
                      "--recovery", f"tokens=256,seq_len=32,batch_size=2,source=file:{texts[0]},eval_source=none"))
    data = json.loads((out / "results.json").read_text())
    rows = {r.get("regime"): r for r in data["rows"] if r["method"] == "uniform-magnitude"}
    assert rc == 0, [r.get("error") for r in data["rows"]]
    assert rows["recovered"]["parameters"] == rows["free"]["parameters"]
    assert rows["recovered"]["recovery_tokens"] >= 256
    assert rows["recovered"]["ppl_geo_mean"] != rows["free"]["ppl_geo_mean"]
    assert "after recovery" in (out / "results.md").read_text()
