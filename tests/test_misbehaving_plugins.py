"""Plugins that misbehave: every class of failure is named, and either skipped with one warning or
stopped with one line (the policy per hook is ``plugins.LIFECYCLE``, documented in docs/hooks.md).

Real plugins registered in process, the real pipeline and the real CLI; nothing is mocked."""
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from amoeba_plugin import hookimpl, plugins
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.cli.main import cli
from amoeba_plugin.methods import Method, PruneResult, PruningContext
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.testing import make_tiny, save_tiny
from amoeba_plugin.testing import assert_one_error_line

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny("llama")
    return model, anatomy_of(model)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama")


def _one_error_line(result, *fragments):
    line = assert_one_error_line(result, *fragments)
    assert "pluggy" not in result.output
    return line


class _RaisesOnPlan:
    @hookimpl
    def amoeba_on_plan(self, plan, context):
        raise ValueError("on-plan exploded")


class _RaisesOnProgress:
    @hookimpl
    def amoeba_on_progress(self, event):
        raise KeyError("progress exploded")


# ---------------------------------------------------------------------------------------- lifecycle hooks
def test_raising_on_plan_stops_the_run_with_one_line_naming_the_plugin(register_plugin, tiny, tiny_dir, tmp_path):
    from amoeba_plugin.api import AmoebaPruner, PruningConfig

    register_plugin(_RaisesOnPlan(), "test-bad-on-plan")
    model, _ = tiny
    with pytest.raises(plugins.PluginHookError) as err:
        AmoebaPruner.from_pretrained(model).prune(
            PruningConfig(method="uniform-magnitude", budget="0.7", calibration=None, evaluation=None))
    assert "test-bad-on-plan" in str(err.value) and "amoeba_on_plan" in str(err.value)
    assert "on-plan exploded" in str(err.value) and f"{plugins.ENV_BLOCK}=test-bad-on-plan" in str(err.value)

    result = CliRunner().invoke(cli, ["prune", str(tiny_dir), "--method", "uniform-magnitude", "--budget", "0.7",
                                      "--calibration", "none", "--no-eval"])
    _one_error_line(result, "plugin 'test-bad-on-plan' failed in amoeba_on_plan", "ValueError", "Fix:")
    rec = next(r for r in plugins.plugin_records() if r.name == "test-bad-on-plan")
    assert rec.failed_hooks == ["amoeba_on_plan"] and rec.status == "failed"


def test_raising_on_progress_is_named_warned_once_and_skipped(register_plugin):
    from amoeba_plugin.progress import progress

    events = []

    class Listener:
        @hookimpl
        def amoeba_on_progress(self, event):
            events.append(event.step)

    register_plugin(Listener(), "test-good-listener")
    register_plugin(_RaisesOnProgress(), "test-bad-listener")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(progress(range(4), stage="test-stage")) == [0, 1, 2, 3]
        assert list(progress(range(3), stage="test-stage-2")) == [0, 1, 2]
    named = [str(w.message) for w in caught if "test-bad-listener" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]  # once, however many events follow
    assert "amoeba_on_progress" in named[0] and "progress exploded" in named[0] and "skipped" in named[0]
    assert events[:5] == [0, 1, 2, 3, 4] or events.count(0) == 2  # the other listener saw every event
    rec = next(r for r in plugins.plugin_records() if r.name == "test-bad-listener")
    assert rec.failed_hooks == ["amoeba_on_progress"] and named[0] in rec.warnings


def test_raising_on_export_keeps_the_export_and_warns(register_plugin, tiny, tmp_path):
    from amoeba_plugin.export import ExportRequest, export

    class BadWatcher:
        @hookimpl
        def amoeba_on_export(self, directory, plan, exporter):
            raise OSError("disk of the watcher is full")

    register_plugin(BadWatcher(), "test-bad-on-export")
    model, anatomy = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dest = export("plan", ExportRequest(model, anatomy, Plan([LayerPlan(0), LayerPlan(2)])), tmp_path / "out")
    assert Plan.load(dest).to_dict()["layers"]  # written and complete
    assert any("test-bad-on-export" in str(w.message) and "amoeba_on_export" in str(w.message) for w in caught)


def test_raising_select_evaluator_falls_through_to_the_next_plugin(register_plugin):
    chosen = object()

    class Chooses:
        @hookimpl
        def amoeba_select_evaluator(self, method, context):
            return chosen

    class Breaks:
        @hookimpl
        def amoeba_select_evaluator(self, method, context):
            raise RuntimeError("cannot choose")

    register_plugin(Chooses(), "test-chooses")
    register_plugin(Breaks(), "test-breaks")  # called first, raises, is skipped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plugins.hook().amoeba_select_evaluator(method="m", context={}) is chosen
    assert any("test-breaks" in str(w.message) for w in caught)


def test_raising_load_model_stops_with_the_plugin_named(register_plugin):
    class Loader:
        @hookimpl
        def amoeba_load_model(self, spec, options):
            raise ZeroDivisionError("bad bundle math")

    register_plugin(Loader(), "test-bad-loader")
    with pytest.raises(plugins.PluginHookError, match="plugin 'test-bad-loader' failed in amoeba_load_model"):
        plugins.hook().amoeba_load_model(spec="x", options={})


def test_every_lifecycle_hook_has_a_policy():
    from amoeba_plugin import hookspecs

    lifecycle = {n for n in dir(hookspecs) if n.startswith("amoeba_") and not n.startswith("amoeba_register_")}
    assert lifecycle == set(plugins.LIFECYCLE)
    hooks_doc = (REPO / "docs" / "hooks.md").read_text()
    for name, policy in plugins.LIFECYCLE.items():
        section = hooks_doc.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert ("stops the run" if policy == "stop" else "skipped") in section, name


# ---------------------------------------------------------------------------------------- results
class _Greedy(Method):
    name = "test-greedy"
    description = "keeps everything, whatever the budget"

    def prune(self, context):
        return PruneResult(Plan.full(context.anatomy, method=self.name))


def test_over_budget_plan_is_refused_naming_method_budget_and_cost(register_plugin, tiny):
    from amoeba_plugin.pipeline import OverBudgetError, run_method

    model, anatomy = tiny
    context = PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse("0.5"))
    with pytest.raises(OverBudgetError) as err:
        run_method(_Greedy(), context)
    full = Plan.full(anatomy).num_parameters(anatomy)
    message = str(err.value)
    assert "method 'test-greedy'" in message and "params=0.5" in message
    assert f"{full:,}" in message and f"{full / 2:,.0f}" in message and "Fix:" in message
    context = PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse("macs=0.6"))
    with pytest.raises(OverBudgetError, match="MACs per token"):
        run_method(_Greedy(), context)


def test_on_plan_that_pushes_over_budget_is_refused(register_plugin, tiny):
    from amoeba_plugin.pipeline import OverBudgetError, run_method

    class Regrow:
        @hookimpl
        def amoeba_on_plan(self, plan, context):
            plan.layers = Plan.full(context["anatomy"]).layers

    register_plugin(Regrow(), "test-regrow")
    model, anatomy = tiny
    method = plugins.get("methods", "uniform-magnitude")
    context = PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse("0.6"))
    with pytest.raises(OverBudgetError, match="after amoeba_on_plan"):
        run_method(method, context)


# ---------------------------------------------------------------------------------------- amoeba plugins
def test_plugin_whose_registrations_all_failed_is_not_loaded(register_plugin):
    class AllFail:
        @hookimpl
        def amoeba_register_methods(self, register):
            raise ImportError("no module named frobnicate")

    class HalfFails:
        @hookimpl
        def amoeba_register_methods(self, register):
            raise ImportError("no module named frobnicate")

        @hookimpl
        def amoeba_register_metrics(self, register):
            from amoeba_plugin.metrics.random import RandomMetric

            metric = RandomMetric()
            metric.name = "test-half-metric"
            register(metric)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        register_plugin(AllFail(), "test-all-fail")
        register_plugin(HalfFails(), "test-half-fails")
    records = {r.name: r for r in plugins.plugin_records()}
    assert records["test-all-fail"].status == "failed"
    assert records["test-half-fails"].status == "partly loaded"
    result = CliRunner().invoke(cli, ["plugins"])
    row = next(line for line in result.stdout.splitlines() if line.startswith("test-all-fail"))
    assert " failed " in row and " loaded " not in row


def test_amoeba_plugins_lists_commands_and_clash_warnings_once(register_plugin):
    from amoeba_plugin.metrics.random import RandomMetric

    class Clash:
        @hookimpl
        def amoeba_register_metrics(self, register):
            register(RandomMetric())  # 'random' is the built-in's

        @hookimpl
        def amoeba_register_commands(self, cli):
            @cli.command(name="test-added-command")
            def added():
                """A command from a plugin."""

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register_plugin(Clash(), "test-clasher")
            for _ in range(3):  # the registries are collected again: the warning is not repeated
                register_plugin(type("Other", (), {})(), f"test-neighbour-{_}")
        clashes = [str(w.message) for w in caught if "test-clasher" in str(w.message)]
        assert len(clashes) == 1 and "clashes" in clashes[0], clashes
        result = CliRunner().invoke(cli, ["plugins"])
        assert result.exit_code == 0, result.output
        row = next(line for line in result.stdout.splitlines() if line.startswith("test-clasher"))
        assert "commands: test-added-command" in row
        assert "clashes" in result.stdout  # the warning is shown there too
        assert [r for r in plugins.plugin_records() if r.name == "test-clasher"][0].commands == ["test-added-command"]
    finally:
        cli.commands.pop("test-added-command", None)


def test_lazy_command_lists_without_importing_and_runs(register_plugin):
    from amoeba_plugin.cli.options import lazy_command

    name = "amoeba_plugin_test_lazy_target"
    sys.modules.pop(name, None)

    class Lazy:
        @hookimpl
        def amoeba_register_commands(self, cli):
            cli.add_command(lazy_command("test-lazy", f"{name}:command", help="A lazily imported command."))

    import types

    module = types.ModuleType(name)

    @click.command("test-lazy")
    @click.argument("who")
    def command(who):
        """Greets WHO."""
        click.echo(f"hello {who}")

    module.command = command
    try:
        register_plugin(Lazy(), "test-lazy-plugin")
        listing = CliRunner().invoke(cli, ["--help"])
        assert "A lazily imported command." in listing.stdout and name not in sys.modules
        sys.modules[name] = module  # importable from now on
        result = CliRunner().invoke(cli, ["test-lazy", "world"])
        assert result.exit_code == 0 and result.stdout.strip() == "hello world", result.output
        assert "Greets WHO" in CliRunner().invoke(cli, ["test-lazy", "--help"]).stdout
    finally:
        sys.modules.pop(name, None)
        cli.commands.pop("test-lazy", None)


def test_help_imports_no_torch():
    """``amoeba --help`` lists every command, plugin commands included, without torch or transformers."""
    code = ("import sys\nfrom amoeba_plugin.cli.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('HEAVY:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY: []" in proc.stdout, proc.stdout[-500:]
    assert "prune" in proc.stdout


def test_importing_the_package_still_registers_the_architecture():
    code = ("import amoeba_plugin, sys\nassert 'torch' not in sys.modules\n"
            "from transformers import AutoConfig\nprint(type(AutoConfig.for_model('amoeba')).__name__)")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "AmoebaConfig"


# ---------------------------------------------------------------------------------------- progress style
def test_one_progress_style_and_quiet_means_quiet(tmp_path):
    """The CLI turns transformers' own bars off (they overwrite its status lines and fill logs), and
    ``-q`` hides the status lines and the host's bars too."""
    from amoeba_plugin import progress

    model_dir = save_tiny(tmp_path / "tiny")
    args = ["export", str(model_dir), "--plan", None, "--output", None]
    plan = tmp_path / "plan.json"
    anatomy = anatomy_of(make_tiny("llama"))
    Plan([LayerPlan(l.index) for l in anatomy.layers[:2]]).save(plan)
    args[3] = str(plan)
    try:
        args[5] = str(tmp_path / "loud")
        loud = CliRunner().invoke(cli, args)
        assert loud.exit_code == 0, loud.output
        assert "loading" in loud.stderr  # the host's status line
        for library_bar in ("Loading weights", "Writing model shards", "it/s]"):
            assert library_bar not in loud.stderr, loud.stderr
        args[5] = str(tmp_path / "quiet")
        quiet = CliRunner().invoke(cli, ["-q", *args])
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr.strip() == "", quiet.stderr
        assert progress.bars_disabled() is not True  # -q lasts one command, even run in process
        progress.set_quiet(True)
        assert progress.bars_disabled() is True  # what -q sets: the host's bars hidden as well
    finally:
        progress.set_quiet(False)
