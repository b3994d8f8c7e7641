"""Wrong types and values in user files and options are one clear error naming the problem and the fix:
plans, budgets, pruning configs, method options, calibration sizes, a method's run checks (preflight,
before any model loads) and the amoeba-lm-eval command's task and output checks."""
import json
import math

import pytest

from amoeba_plugin.api import PruningConfig, preflight
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError, PlanError, UnknownNameError
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import MethodOptions, build_options, option
from amoeba_plugin.plan import Plan
from amoeba_plugin.testing import registered_plugin


# ---------------------------------------------------------------------- plans
def _plan_dict(**changes):
    data = {"format": "amoeba-plan", "version": 1, "source": {}, "layers": [{"index": 0}, {"index": 1}],
            "hidden_channels": None, "output_bias": False, "provenance": {}}
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, match", [
    ({"version": "2"}, "version is '2', not a whole number"),
    ({"version": True}, "not a whole number"),
    ({"source": "llama"}, "'source' is a string, not an object"),
    ({"provenance": [1]}, "'provenance' is a list, not an object"),
    ({"layers": [{"index": "0"}]}, "index '0', not a whole number"),
    ({"layers": [{"index": 0, "kv_groups": "01"}]}, "kv_groups is a string"),
    ({"layers": [{"index": 0, "mlp_channels": [1.5]}]}, "mlp_channels is a list"),
    ({"layers": [{"index": 0, "query_heads": [0, 1]}]}, "query_heads"),
    ({"layers": [3]}, "entry 0 is a int, not an object"),
    ({"layers": [{"index": 0, "heads": [1]}]}, "unknown keys"),
    ({"layers": "all"}, "no 'layers' list"),
    ({"hidden_channels": "0,1"}, "hidden_channels is a string"),
    ({"output_bias": "no"}, "output_bias is 'no'"),
])
def test_a_plan_with_wrong_types_is_a_plan_error(changes, match):
    with pytest.raises(PlanError, match=match) as err:
        Plan.from_dict(_plan_dict(**changes))
    assert err.value.fix


def test_a_binary_or_garbage_plan_file_names_the_file(tmp_path):
    binary = tmp_path / "plan.json"
    binary.write_bytes(b"\x80\x04\x95\x00\xff\xfe\x00")
    with pytest.raises(PlanError, match=f"{binary} is not a plan: it is not text"):
        Plan.load(binary)
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"format": "amoeba-plan", "layers": [')
    with pytest.raises(PlanError, match=f"{garbage}: the plan is not valid JSON"):
        Plan.load(garbage)
    good = Plan.from_dict(_plan_dict())
    assert Plan.from_json(good.to_json()).layers == good.layers


# ---------------------------------------------------------------------- budgets and the pruning config
@pytest.mark.parametrize("budget, match", [
    ("count=inf", "not a finite number"), ("count=nan", "not a finite number"), ("params=nan", "not a finite"),
    (math.inf, "not a finite"), (True, "neither a number nor a budget string"), ([0.5], "neither a number"),
    ("nonembed=2", "fraction of non-embedding parameters"), ("macs=0", "fraction of MACs"),
    ("shape=layers:0", "positive integers"),
])
def test_bad_budgets_are_one_clear_error(budget, match):
    with pytest.raises(InvalidBudgetError, match=match) as err:
        PruningConfig(budget=budget)
    assert err.value.fix


def test_a_budget_value_or_tolerance_of_the_wrong_type():
    with pytest.raises(InvalidBudgetError, match="not a number"):
        Budget("params", True)
    with pytest.raises(InvalidBudgetError, match="tolerance"):
        Budget("params", 0.5, tolerance=2)
    assert Budget.parse("count=3e6").value == 3_000_000


@pytest.mark.parametrize("field, value, match", [
    ("calibration", ["sotu:train"], "calibration must be a text source name"),
    ("evaluation", 3, "evaluation must be a text source name"),
    ("exporter", None, "exporter must be a non-empty name"),
    ("allow_calibration_overlap", "yes", "true or false"),
    ("calibration_samples", 2.5, "calibration_samples must be an integer"),
])
def test_pruning_config_fields_of_the_wrong_type(field, value, match):
    with pytest.raises(AmoebaError, match=match):
        PruningConfig(**{field: value})


def test_a_damaged_pruning_config_file_names_it(tmp_path):
    path = tmp_path / "pruning_config.json"
    path.write_text('{"method": "flap", "budget"')
    with pytest.raises(AmoebaError, match=f"pruning config {path} is damaged"):
        PruningConfig.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- method options
from dataclasses import dataclass  # noqa: E402


@dataclass
class _Options(MethodOptions):
    keep_layers: list[int] = option([], "layers left whole")
    names: list[str] = option([], "names")
    steps: int = option(4, "steps", ge=1)


def test_a_number_for_a_list_option_is_a_list_of_one_and_a_word_is_refused_with_an_example():
    assert build_options(_Options, {"keep_layers": 3}).keep_layers == [3]
    assert build_options(_Options, {"keep_layers": "0,-1"}).keep_layers == [0, -1]
    assert build_options(_Options, {"names": "first"}).names == ["first"]  # never ['f', 'i', 'r', ...]
    with pytest.raises(AmoebaError, match=r"keep_layers='first' is not a list\[int\]") as err:
        build_options(_Options, {"keep_layers": "first"}, "m")
    assert "e.g. keep_layers=0,-1" in err.value.fix
    with pytest.raises(AmoebaError, match="steps must be >= 1, got 0"):
        build_options(_Options, {"steps": 0})


def test_a_legacy_dict_option_with_a_list_default_splits_a_string_into_items():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        class Legacy(Method):
            name = "legacy-errors-test"
            default_options = {"keep_layers": [], "rate": 0.5}

    options = Legacy().build_options({"keep_layers": "first,last", "rate": "x"})
    assert options.keep_layers == ["first", "last"] and options.rate == "x"  # untyped stays as given


# ---------------------------------------------------------------------- calibration sizes
def test_a_source_shorter_than_one_window_does_not_say_ask_for_at_most_0(tmp_path):
    from amoeba_plugin.calibration import calibration_windows
    from amoeba_plugin.models import load_model

    text = tmp_path / "short.txt"
    text.write_text("a few words only.")
    _, tokenizer = load_model("amoeba-tiny-sotu")
    with pytest.raises(AmoebaError) as err:
        calibration_windows(tokenizer, f"file:{text}", n=4, seq_len=256)
    assert "fewer than one window of 256 tokens" in err.value.problem
    assert "at most 0" not in str(err.value) and "seq_len below" in err.value.fix


# ---------------------------------------------------------------------- a method's run checks
class _Checked(Method):
    name = "errors-test-checked"
    budget_kinds = ("params",)
    seen = []

    def check_run(self, budget, options, seed=0):
        self.seen.append((str(budget), seed))
        if seed == 13:
            raise AmoebaError("the checkpoint was made with other settings", "restart")

    def prune(self, context):  # pragma: no cover - preflight never calls it
        return PruneResult(Plan.full(context.anatomy))


class _CheckedPlugin:
    from amoeba_plugin import hookimpl

    @hookimpl
    def amoeba_register_methods(self, register):
        register(_Checked())


def test_preflight_runs_the_methods_run_check_before_anything_loads():
    with registered_plugin(_CheckedPlugin(), "errors-test-checked"):
        preflight(PruningConfig(method="errors-test-checked", budget="0.6", calibration=None, seed=2))
        assert _Checked.seen[-1] == ("params=0.6", 2)
        with pytest.raises(AmoebaError, match="other settings"):
            preflight(PruningConfig(method="errors-test-checked", budget="0.6", calibration=None, seed=13))


# ---------------------------------------------------------------------- amoeba-lm-eval
def test_lm_eval_command_checks_tasks_and_output_before_the_model(tmp_path):
    pytest.importorskip("lm_eval")
    from amoeba_plugin.cli.lm_eval import check_run

    with pytest.raises(UnknownNameError, match="no lm-eval task named 'amoeba_sotu_pll'") as err:
        check_run(["run", "--model", "amoeba", "--tasks", "amoeba_sotu_ppl,amoeba_sotu_pll"])
    assert "amoeba_sotu_ppl" in err.value.fix  # the closest name
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(AmoebaError, match="afile is a file"):
        check_run(["run", "--tasks=amoeba_sotu_ppl", "--output_path", str(blocker / "results")])
    check_run(["run", "--tasks", "amoeba_sotu_ppl", "--output_path", str(tmp_path / "results")])
    check_run(["ls", "tasks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_lm_eval_console_script_prints_one_line_for_an_unknown_task(capsys):
    pytest.importorskip("lm_eval")
    from amoeba_plugin.cli.lm_eval import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", "amoeba", "--model_args", "pretrained=amoeba-tiny-sotu", "--tasks", "amoeba_nosuch"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "amoeba_nosuch" in err and "Fix:" in err and "Traceback" not in err


def test_plan_json_round_trip_keeps_types():
    data = json.loads(Plan.from_dict(_plan_dict(layers=[{"index": 0, "kv_groups": [1], "query_heads": [[0, 1]],
                                                         "head_channels": [[0, 4]], "mlp_channels": [2]}])).to_json())
    assert data["layers"][0]["head_channels"] == [[0, 4]] and data["version"] == 2
