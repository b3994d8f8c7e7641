"""Typed method options (amoeba_plugin.options), their CLI kit (amoeba_plugin.cli.options), and the
flags of `amoeba prune` / `amoeba eval` under their new names and their old ones."""
import json
import time
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from amoeba_plugin.cli.main import cli
from amoeba_plugin.cli.options import (calibration_options, evaluation_options, option_flags, parse_options,
                                       pruning_settings, table)
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.methods import Method, MethodOptions, PruneResult
from amoeba_plugin.options import build_options, describe_options, option, option_like
from amoeba_plugin.plan import Plan


@dataclass
class DemoOptions(MethodOptions):
    steps: int = option(10, "optimizer steps", ge=1)
    lr: float = option(1e-3, "learning rate", gt=0)
    mode: str = option("fast", "how", choices=("fast", "slow"))
    layers: list[int] = option([0, -1], "layers kept whole")
    names: list[str] | None = option(None, "some names")
    extra: dict = option({}, "scorer options")
    verbose: bool = option(False, "talk")
    limit: int | None = option(None, "at most this many", ge=2)


@dataclass
class LongerDemoOptions(MethodOptions):
    steps: int = option_like(DemoOptions, "steps", 50)
    lr: float = option_like(DemoOptions, "lr")


def test_values_are_coerced_to_the_field_types():
    o = build_options(DemoOptions, {"steps": "20", "lr": "0.5", "layers": "1,2", "names": "a,b", "verbose": "yes",
                                    "extra": '{"k": 1}', "limit": "none"})
    assert (o.steps, o.lr, o.layers, o.names, o.verbose, o.extra, o.limit) == (20, 0.5, [1, 2], ["a", "b"], True,
                                                                            {"k": 1}, None)
    assert build_options(DemoOptions, {"steps": 3.0, "limit": 4}).steps == 3
    assert build_options(DemoOptions, o) is o
    assert o["steps"] == 20  # read-only mapping access, as when options were a dict


def test_mutable_defaults_are_not_shared():
    a, b = DemoOptions(), DemoOptions()
    a.layers.append(5)
    assert b.layers == [0, -1] and DemoOptions.defaults()["layers"] == [0, -1]


@pytest.mark.parametrize("values, fragment", [
    ({"steps": 0}, "option steps must be >= 1, got 0"), ({"steps": "x"}, "steps='x' is not an int"),
    ({"steps": True}, "is not an int"), ({"lr": 0}, "lr must be > 0"), ({"mode": "medium"}, "unknown mode 'medium'"),
    ({"layers": "a,b"}, "is not a list[int]"), ({"limit": 1}, "limit must be >= 2"),
    ({"verbose": "maybe"}, "is not a bool"), ({"extra": "[1]"}, "is not a dict")])
def test_bad_values_name_the_option_and_the_fix(values, fragment):
    with pytest.raises(AmoebaError) as err:
        build_options(DemoOptions, values, "demo")
    assert fragment in str(err.value) and "method 'demo'" in str(err.value) and err.value.fix


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(AmoebaError, match="unknown option.s. for 'demo': stpes") as err:
        build_options(DemoOptions, {"stpes": 3}, "demo")
    assert "steps, lr, mode" in err.value.fix


def test_option_like_reuses_a_field_and_restates_a_default_on_purpose():
    described = describe_options(LongerDemoOptions)
    assert described["steps"] == {"type": "int", "default": 50, "help": "optimizer steps", "bounds": {"ge": 1}}
    assert described["lr"]["default"] == 1e-3
    with pytest.raises(AmoebaError, match="steps must be >= 1"):
        LongerDemoOptions(steps=0)


def test_describe_lists_type_default_help_and_choices():
    d = describe_options(DemoOptions)
    assert d["mode"] == {"type": "str", "default": "fast", "help": "how", "choices": ["fast", "slow"]}
    assert d["names"]["type"] == "list[str] | None" and d["layers"]["default"] == [0, -1]
    json.dumps(d)


class DemoMethod(Method):
    name = "demo-typed"
    options_class = DemoOptions

    def prune(self, context):
        options = self.resolve_options(context)
        return PruneResult(Plan.full(context.anatomy), info={"steps": options.steps})


def test_a_method_builds_its_options_and_derives_default_options():
    method = DemoMethod()
    assert method.build_options({"steps": "7"}).steps == 7
    assert method.default_options["steps"] == 10 and Method().build_options({}) == MethodOptions()
    with pytest.raises(AmoebaError, match="unknown option.s. for 'base'"):
        type("Base", (Method,), {"name": "base"})().build_options({"x": 1})


def test_a_method_with_a_default_options_dict_still_works():
    with pytest.warns(DeprecationWarning, match="options_class"):
        class Legacy(Method):
            name = "legacy"
            default_options = {"metric": "magnitude", "keep": [1]}

    method = Legacy()
    options = method.build_options({"metric": "wanda-sp"})
    assert options.metric == "wanda-sp" and options["keep"] == [1]
    assert method.default_options == {"metric": "magnitude", "keep": [1]}
    with pytest.raises(AmoebaError, match="unknown option"):
        method.build_options({"nope": 1})


# ---------------------------------------------------------------------- preflight
def test_preflight_refuses_a_bad_option_before_any_model_loads(monkeypatch):
    import amoeba_plugin.models
    from amoeba_plugin.api import PruningConfig, preflight

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(amoeba_plugin.models, "load_model", no_loading)
    for options, fragment in (({"keep_layers": "a"}, "keep_layers"), ({"metrik": "magnitude"}, "unknown option")):
        with pytest.raises(AmoebaError, match=fragment):
            preflight(PruningConfig(method="uniform-magnitude", method_options=options))
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["prune", "amoeba-tiny-sotu", "-m", "uniform-magnitude", "--option", "keep_layers=[0.5]"])
    assert result.exit_code == 2 and "keep_layers" in result.stderr and "Fix:" in result.stderr
    assert time.perf_counter() - started < 5  # no model load: well under a second on an idle machine


# ---------------------------------------------------------------------- the CLI kit
@dataclass
class KitOptions(MethodOptions):
    batch_size: int = option(8, "windows per batch", ge=1)
    widths: tuple[float, ...] = option((1.0, 0.5), "width ratios")
    domains: list[str] = option(["a=x,y"], "domains")
    dynamic: bool = option(True, "dynamic loading")
    mode: str | None = option(None, "a mode", choices=("x", "y"))


def _kit_command(**kit):
    seen = {}

    @click.command()
    @option_flags(KitOptions, **kit)
    def command(**params):
        seen.update(params)

    return command, seen


def test_option_flags_take_help_defaults_and_types_from_the_fields():
    command, seen = _kit_command(into="options")
    result = CliRunner().invoke(command, ["--help"])
    assert "--batch-size INTEGER" in result.output and "Windows per batch." in result.output
    assert "[default: 8]" in result.output and "--dynamic / --no-dynamic" in result.output
    assert "[x|y]" in result.output and "1,0.5" in result.output
    assert CliRunner().invoke(command, []).exit_code == 0
    assert seen["options"] == {"batch_size": 8, "widths": "1,0.5", "domains": ["a=x,y"], "dynamic": True}
    result = CliRunner().invoke(command, ["--batch-size", "2", "--widths", "1,0.25", "--domains", "b=u,v",
                                          "--domains", "c=s,t", "--no-dynamic", "--mode", "y"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == {"batch_size": 2, "widths": "1,0.25", "domains": ["b=u,v", "c=s,t"], "dynamic": False,
                               "mode": "y"}


def test_option_flags_build_the_instance_with_restated_defaults_aliases_and_names():
    command, seen = _kit_command(into="options", build=True, defaults={"batch_size": 4},
                                 aliases={"batch_size": ("--bs",)}, decls={"dynamic": ("--dynamic/--constant",)})
    help_text = CliRunner().invoke(command, ["--help"]).output
    assert "[default: 4]" in help_text and "--bs" not in help_text and "--constant" in help_text
    assert CliRunner().invoke(command, ["--bs", "3", "--constant"]).exit_code == 0
    assert seen["options"] == KitOptions(batch_size=3, dynamic=False)
    bad = CliRunner().invoke(command, ["--batch-size", "0"])
    assert bad.exit_code != 0 and "batch_size must be >= 1" in str(bad.exception)


def test_shared_run_flags_are_named_as_in_pruning_config():
    seen = {}

    @click.command()
    @calibration_options(calibration_samples=99)
    @evaluation_options()
    def command(**params):
        seen.update(params)

    assert CliRunner().invoke(command, ["--samples", "4", "--eval-source", "brown:test"]).exit_code == 0
    from amoeba_plugin.api import PruningConfig

    config = PruningConfig(**pruning_settings(seen))
    assert (config.calibration_samples, config.evaluation, config.evaluation_windows) == (4, "brown:test", 32)
    assert CliRunner().invoke(command, []).exit_code == 0 and seen["calibration_samples"] == 99
    help_text = CliRunner().invoke(command, ["--help"]).output
    assert "--calibration-samples" in help_text and "--samples" not in help_text and "--eval-source" not in help_text


def test_parse_options_and_table():
    assert parse_options(["steps=3", "name=abc", "xs=[1, 2]", "flag=true", "s= a b "]) == {
        "steps": 3, "name": "abc", "xs": [1, 2], "flag": True, "s": "a b"}
    with pytest.raises(AmoebaError, match="not key=value"):
        parse_options(["steps"])
    assert table([["a", None], ["bb", 3]], ["x", "y"]).splitlines() == ["x   y", "--  -", "a   -", "bb  3"]


# ---------------------------------------------------------------------- amoeba methods
def test_methods_json_and_one_method_list_the_options():
    data = {m["name"]: m for m in json.loads(CliRunner().invoke(cli, ["methods", "--json"]).stdout)}
    options = data["uniform-magnitude"]["options"]
    assert options["metric"]["default"] == "magnitude" and options["metric"]["type"] == "str" and options["metric"]["help"]
    assert options["keep_layers"]["type"] == "list[int]"
    one = CliRunner().invoke(cli, ["methods", "uniform-magnitude"])
    assert one.exit_code == 0 and "keep_layers" in one.stdout and "list[int]" in one.stdout and "budgets:" in one.stdout
    assert json.loads(CliRunner().invoke(cli, ["methods", "uniform-magnitude", "--json"]).stdout)["options"] == options
    missing = CliRunner().invoke(cli, ["methods", "no-such-method"])
    assert missing.exit_code == 2 and "no-such-method" in missing.stderr


# ---------------------------------------------------------------------- renamed flags: new names and old ones
def test_prune_and_eval_take_the_new_flag_names_and_the_old_ones(tmp_path):
    common = ["--method", "uniform-magnitude", "--budget", "0.8", "--calibration", "none", "--output"]
    new = CliRunner().invoke(cli, ["prune", "amoeba-tiny-sotu", *common, tmp_path / "new", "--evaluation", "brown:test",
                                   "--evaluation-windows", "2", "--evaluation-seq-len", "32",
                                   "--calibration-samples", "4", "--calibration-seq-len", "16"])
    old = CliRunner().invoke(cli, ["prune", "amoeba-tiny-sotu", *common, tmp_path / "old", "--eval-source", "brown:test",
                                   "--eval-windows", "2", "--evaluation-seq-len", "32", "--samples", "4",
                                   "--seq-len", "16"])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert new.stdout.replace("new", "old") == old.stdout
    for name in ("new", "old"):
        config = json.loads((tmp_path / name / "pruning_config.json").read_text())
        assert (config["evaluation"], config["evaluation_windows"], config["evaluation_seq_len"],
                config["calibration_samples"], config["calibration_seq_len"]) == ("brown:test", 2, 32, 4, 16)
    a = CliRunner().invoke(cli, ["eval", "amoeba-tiny-sotu", "--evaluation", "brown:test", "--evaluation-windows", "2",
                                 "--evaluation-seq-len", "32"])
    b = CliRunner().invoke(cli, ["eval", "amoeba-tiny-sotu", "--source", "brown:test", "--windows", "2",
                                 "--seq-len", "32"])
    assert a.exit_code == 0 and a.stdout == b.stdout and "perplexity (brown:test)" in a.stdout


def test_a_check_options_override_still_runs_in_preflight_and_prune():
    seen = []

    class OldStyle(Method):
        name = "old-style"
        options_class = DemoOptions

        def check_options(self, options):
            super().check_options(options)
            seen.append(dict(options))
            if options.get("mode") == "slow":
                raise AmoebaError("slow is not allowed here", "use mode=fast")

    method = OldStyle()
    assert method.build_options({"steps": 2}).steps == 2 and seen == [{"steps": 2}]
    with pytest.raises(AmoebaError, match="slow is not allowed"):
        method.build_options({"mode": "slow"})
    with pytest.raises(AmoebaError, match="steps must be >= 1"):  # the dataclass checks first
        method.build_options({"steps": 0})


def test_an_annotation_that_cannot_be_resolved_takes_values_as_given():
    import dataclasses

    Odd = dataclasses.make_dataclass("Odd", [("thing", "NoSuchType", option(1, "x"))], bases=(MethodOptions,))
    assert Odd(thing="anything").thing == "anything"


def test_a_registry_option_refuses_an_unregistered_name_before_any_model_loads():
    """``option(..., registry="metrics")``: a mistyped metric is an options error, not one after loading."""
    import dataclasses

    from amoeba_plugin.api import PruningConfig, preflight
    from amoeba_plugin.errors import UnknownNameError
    from amoeba_plugin.options import describe_options

    Scored = dataclasses.make_dataclass("Scored", [("metric", str, option("magnitude", "x", registry="metrics"))],
                                        bases=(MethodOptions,))
    assert Scored(metric="wanda-sp").metric == "wanda-sp"
    with pytest.raises(UnknownNameError, match="no metric named 'nosuch'"):
        Scored(metric="nosuch")
    assert describe_options(Scored)["metric"]["registry"] == "metrics"
    with pytest.raises(UnknownNameError, match="nosuch"):
        preflight(PruningConfig(method="uniform-magnitude", method_options={"metric": "nosuch"}))
