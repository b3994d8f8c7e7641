"""benchmarks.compare_methods: the method-comparison harness (on benchmarks.harness), on the embedded tiny model.

Small on purpose (2 windows of 32 tokens per source, one torch thread): the built-in
``uniform-magnitude`` plus in-test methods registered through the plugin manager, one that counts
its calls (to see resuming skip finished runs), one that raises, one that edits the shared model.
"""
import argparse
import json
import shutil
from collections import Counter
from typing import ClassVar

import pytest
import torch

from amoeba_plugin import hookimpl
from amoeba_plugin.eval import Evaluator
from amoeba_plugin.methods import Method
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import registered_plugin
from benchmarks import compare_methods as cm
from benchmarks import harness


CALLS: Counter = Counter()
SEEN: dict = {}
CAL_SAMPLES, CAL_LEN = 2, 32
METHODS = "test-mutating,test-failing,test-counting,uniform-magnitude"


class CountingMethod(Method):
    """uniform-magnitude, counting its calls and checking it gets the preloaded calibration windows."""

    name = "test-counting"
    capabilities = frozenset({"width", "calibration"})
    default_options: ClassVar[dict] = {"metric": "magnitude"}

    def prune(self, context):
        CALLS[self.name] += 1
        SEEN["options"] = dict(context.options)
        SEEN["calibration"] = context.calibration()
        return get("methods", "uniform-magnitude").prune(context)


class FailingMethod(Method):
    name = "test-failing"

    def prune(self, context):
        CALLS[self.name] += 1
        raise RuntimeError("boom at " + str(context.budget))


class MutatingMethod(Method):
    """Scales an MLP weight of the shared model in place: the harness must notice and reload."""

    name = "test-mutating"

    def prune(self, context):
        CALLS[self.name] += 1
        with torch.no_grad():
            context.model.model.layers[0].mlp.down_proj.weight.mul_(0.5)
        return get("methods", "uniform-magnitude").prune(context)


class FakeLmEval(Evaluator):
    name = "test-lm-eval"

    def evaluate(self, model, tokenizer, tasks=(), limit=None):
        CALLS[self.name] += 1
        return {"results": {t: {"alias": t, "acc,none": 0.25 + 0.01 * len(t), "acc_stderr,none": 0.01}
                            for t in tasks}}


class HarnessPlugin:
    @hookimpl
    def amoeba_register_methods(self, register):
        for method in (CountingMethod(), FailingMethod(), MutatingMethod()):
            register(method)

    @hookimpl
    def amoeba_register_evaluators(self, register):
        register(FakeLmEval())


@pytest.fixture(scope="module", autouse=True)
def plugin():
    with registered_plugin(HarnessPlugin(), "test-benchmark-harness"):
        yield


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    words = ["the", "nation", "congress", "people", "year", "government", "states", "country", "war", "peace", "law", "union", "trade", "public", "great", "must", "will", "new", "world", "time", "free", "work"]
    text = "\n\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(60)) + "." for i in range(40))
    path = tmp_path_factory.mktemp("cal") / "calibration.txt"
    path.write_text(text)
    return path


def common(calibration_file, out, methods=METHODS, budgets="0.8,0.5", *extra):
    return ["--model", "amoeba-tiny-sotu", "--methods", methods, "--budgets", budgets,
            "--eval-sources", "sotu:validation,moby-dick:test", "--eval-windows", "2", "--eval-seq-len", "32",
            "--calibration", f"file:{calibration_file}", "--calibration-samples", str(CAL_SAMPLES),
            "--calibration-seq-len", str(CAL_LEN), "--threads", "1", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, calibration_file):
    out = tmp_path_factory.mktemp("compare") / "run"
    CALLS.clear()
    argv = common(calibration_file, out, METHODS, "0.8,0.5", "--method-options", "test-counting:metric=magnitude",
                  "--lm-eval-tasks", "task_a,task_bb", "--lm-eval-limit", "3", "--lm-eval-evaluator", "test-lm-eval")
    rc = cm.main(argv)
    return {"rc": rc, "out": out, "argv": argv, "calls": Counter(CALLS),
            "data": json.loads((out / "results.json").read_text())}


def rows_of(data, method):
    return {r["budget"]: r for r in data["rows"] if r["method"] == method}


def test_outputs_written_with_dense_row_first(first_run):
    out, data = first_run["out"], first_run["data"]
    assert first_run["rc"] == 1  # some runs failed (on purpose); the rest completed
    assert (out / "quality_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dense = data["rows"][0]
    assert dense["method"] == "dense" and dense["budget_value"] == 1.0 and dense["status"] == "ok"
    assert set(dense["perplexity"]) == {"sotu:validation", "moby-dick:test"}
    assert dense["eval"]["sotu:validation"] == {"tokens": 2 * 31, "windows": 2}
    assert data["settings"]["eval_windows_used"] == {"sotu:validation": 2, "moby-dick:test": 2}
    assert data["machine"]["cpu_count"] and data["versions"]["torch"] == torch.__version__
    um = rows_of(data, "uniform-magnitude")
    assert set(um) == {"params=0.8", "params=0.5"}
    for budget, row in um.items():
        assert row["status"] == "ok" and row["fits_budget"] is True
        assert row["parameters_ratio"] <= float(budget.split("=")[1])
        assert 0 < row["non_embedding_ratio"] < row["parameters_ratio"] < 1
        assert 0 < row["macs_ratio"] < 1 and row["prune_seconds"] >= 0
        assert row["peak_rss_mib"] >= row["rss_start_mib"] > 0 and row["peak_rss_delta_mib"] >= 0
        assert row["perplexity"]["sotu:validation"] > dense["perplexity"]["sotu:validation"]
        assert (out / row["plan_file"]).is_file()
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | budget | params (ratio)") and "ppl moby-dick:test" in table[0]
    assert table[1].startswith("| dense | 1 |")
    assert [line.split(" | ")[1] for line in table[1:]] == ["1"] + ["0.8"] * 4 + ["0.5"] * 4  # sorted by budget
    assert "◀ best" in md and "RuntimeError: boom" in md


def test_same_tokens_options_and_lm_eval(first_run):
    data = first_run["data"]
    assert SEEN["calibration"].shape == (CAL_SAMPLES, CAL_LEN)
    assert SEEN["options"] == {"metric": "magnitude"}
    counting, um = rows_of(data, "test-counting"), rows_of(data, "uniform-magnitude")
    for budget in um:  # same method, same tokens: the same numbers
        assert counting[budget]["label"] == "test-counting[metric=magnitude]"
        assert counting[budget]["perplexity"] == um[budget]["perplexity"]
    assert first_run["calls"]["test-lm-eval"] == 1 + 2 * 2  # dense + two methods that made a model, two budgets each
    assert um["params=0.5"]["lm_eval"]["task_bb"]["acc,none"] == pytest.approx(0.25 + 0.07)
    assert "task_a (acc)" in (first_run["out"] / "results.md").read_text()


def test_failure_recorded_and_others_continue(first_run):
    failing = rows_of(first_run["data"], "test-failing")
    assert set(failing) == {"params=0.8", "params=0.5"}
    for budget, row in failing.items():
        assert row["status"] == "error"
        assert row["error"]["type"] == "RuntimeError" and row["error"]["stage"] == "prune"
        assert row["error"]["message"] == f"boom at {budget}"
        assert "perplexity" not in row
    # the methods listed after the failing one still ran at every budget
    assert all(r["status"] == "ok" for r in rows_of(first_run["data"], "uniform-magnitude").values())


def test_mutation_detected_and_model_reloaded(first_run):
    data = first_run["data"]
    for row in rows_of(data, "test-mutating").values():
        assert row["status"] == "error" and row["error"]["type"] == "ModelMutatedError"
        assert row["model_unchanged"] is False and "changed the weights" in row["error"]["message"]
    # after each reload the shared model was the original again: no other run saw a changed model
    others = [r for r in data["rows"] if r["method"] not in ("dense", "test-mutating", "test-failing")]
    assert others and all(r["model_unchanged"] is True for r in others)


def test_resume_skips_finished_runs_and_force_redoes(first_run, tmp_path, calibration_file):
    out = tmp_path / "run"
    shutil.copytree(first_run["out"], out)
    before = {r["key"]: r for r in first_run["data"]["rows"]}
    argv = [str(out) if a == str(first_run["out"]) else a for a in first_run["argv"]]
    CALLS.clear()
    assert cm.main(argv) == 1
    # finished runs (dense included) are skipped; failed ones are tried again
    assert CALLS["test-counting"] == 0 and CALLS["test-lm-eval"] == 0
    assert CALLS["test-failing"] == 2 and CALLS["test-mutating"] == 2
    after = {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(after) == set(before)
    for key, row in before.items():
        if row["status"] == "ok":
            assert after[key] == row

    # a different setting cannot be resumed: refused before the model is loaded
    changed = [("3" if a == "2" and argv[i - 1] == "--eval-windows" else a) for i, a in enumerate(argv)]
    assert cm.main(changed) == 2
    assert json.loads((out / "results.json").read_text())["rows"] == list(after.values())

    # --force redoes the runs asked for, keeping the other rows
    CALLS.clear()
    assert cm.main(common(calibration_file, out, "test-counting", "0.5", "--method-options",
                          "test-counting:metric=magnitude", "--lm-eval-tasks", "task_a,task_bb",
                          "--lm-eval-limit", "3", "--lm-eval-evaluator", "test-lm-eval", "--force", "--no-plot")) == 0
    assert CALLS["test-counting"] == 1
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == len(before)


def test_two_runs_share_one_results_file(tmp_path):
    """Two jobs with the same settings and other --methods write into one --out: neither loses the
    other's rows or command, and a --force run with other settings does not take the old rows back."""
    def book(methods, settings, force=False):
        args = argparse.Namespace(out=tmp_path, force=force, argv=["--methods", methods])
        results = cm.ResultsBook(args, "test-results", "test_writer.py", markdown=lambda data: "md\n")
        results.check(settings)
        results.open(dict(settings), log=lambda *a: None)
        return results

    def row(method):
        return {"key": f"{method}|params=0.5", "method": method, "label": method, "budget": "params=0.5",
                "budget_value": 0.5, "status": "ok"}

    settings = {"model": "m", "seed": 0}
    first, second = book("a,b", settings), book("c", settings)  # both started before either wrote
    first.put(row("a"))
    second.put(row("c"))
    first.put(row("b"))
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in data["rows"]} == {"a", "b", "c"}
    assert data["commands"] == [second.data["command"], first.data["command"]]

    other = book("d", {"model": "m", "seed": 1}, force=True)  # other settings: starts over
    other.put(row("d"))
    assert [r["method"] for r in json.loads((tmp_path / "results.json").read_text())["rows"]] == ["d"]


def test_eval_on_calibration_refused(tmp_path, calibration_file, capsys):
    out = tmp_path / "refused"
    argv = common(calibration_file, out, "uniform-magnitude", "0.5")
    argv[argv.index("--eval-sources") + 1] = f"sotu:validation,file:{calibration_file}"
    assert cm.main(argv) == 2
    assert "is the calibration text" in capsys.readouterr().err
    assert not out.exists()
    argv[argv.index("--eval-sources") + 1] = "sotu:train"
    argv[argv.index("--calibration") + 1] = "sotu"  # the default calibration split of sotu is train
    assert cm.main(argv) == 2
    assert "--allow-eval-on-calibration" in capsys.readouterr().err


def test_start_up_errors(tmp_path, calibration_file, capsys):
    out = tmp_path / "errors"
    assert cm.main(common(calibration_file, out, "no-such-method", "0.5")) == 2
    assert "no method named 'no-such-method'" in capsys.readouterr().err
    assert cm.main(common(calibration_file, out, "uniform-magnitude", "0.5", "--lm-eval-tasks", "x",
                          "--lm-eval-evaluator", "no-such-evaluator")) == 2
    assert "no plugin registers it" in capsys.readouterr().err
    assert cm.main(common(calibration_file, out, "uniform-magnitude", "1.5")) == 2
    assert cm.main(common(calibration_file, out, "uniform-magnitude", "0.5", "--method-options",
                          "uniform-magnitude:no_such_option=1")) == 2
    assert "unknown option(s) for 'uniform-magnitude'" in capsys.readouterr().err
    assert not out.exists()


def test_method_options_parsing():
    assert harness.parse_method_options(["flap:metric=fluctuation,ratio=0.5", 'flap:{"bias": true}',
                                    '{"wanda-sp": {"n": 2}}']) == {
        "flap": {"metric": "fluctuation", "ratio": 0.5, "bias": True}, "wanda-sp": {"n": 2}}
    for bad in ("flap", "flap:metric", "{not json", '{"flap": 3}'):
        with pytest.raises(cm.AmoebaError):
            harness.parse_method_options([bad])
    assert harness.split_list("shape=layers:6,heads:4;0.5") == ["shape=layers:6,heads:4", "0.5"]


def test_peak_rss_sees_an_allocation():
    with harness.PeakRSS() as rss:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        del block
    measured = rss.as_dict()
    assert measured["peak_rss_delta_mib"] >= 48
    assert measured["peak_rss_mib"] >= measured["rss_start_mib"] + 48
