"""One test per hook specification, exercising it for real (datasette's convention), plus the
meta-tests that every hook has such a test and a section in docs/hooks.md."""
import importlib
import inspect
import re
import types
from pathlib import Path

import pytest
import torch

from amoeba_plugin import hookimpl, hookspecs, plugins
from amoeba_plugin.anatomy import Anatomy, ArchitectureAdapter, anatomy_of, get_adapter
from amoeba_plugin.errors import UnsupportedModelError
from amoeba_plugin.export import Exporter, ExportRequest, export
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.metrics import Metric
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.testing import make_tiny

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def _hook_names() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, marker))


def _optional(module: str, name: str):
    """A base class from a module that may not exist yet, or ``object``."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return object


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny("llama")
    return model, anatomy_of(model)


# ---------------------------------------------------------------------------------------- registration
def test_hook_amoeba_register_methods(register_plugin, tiny):
    class KeepAll(Method):
        name = "test-keep-all"
        description = "keeps every unit"

        def prune(self, context):
            return PruneResult(Plan.full(context.anatomy, method=self.name))

    class P:
        @hookimpl
        def amoeba_register_methods(self, register):
            register(KeepAll())

    register_plugin(P(), "test-methods")
    method = plugins.get("methods", "test-keep-all")
    assert plugins.owner("methods", "test-keep-all") == "test-methods"
    from amoeba_plugin.budget import Budget
    from amoeba_plugin.methods import PruningContext

    model, anatomy = tiny
    result = method.prune(PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse("1")))
    assert result.plan.validate(anatomy).num_parameters(anatomy) == sum(p.numel() for p in model.parameters())


def test_hook_amoeba_register_metrics(register_plugin, tiny):
    class Depth(Metric):
        name = "test-depth"
        units = frozenset({"layer"})

        def score(self, model, anatomy, unit, calibration=None, **options):
            return torch.arange(anatomy.num_layers, dtype=torch.float32)

    class P:
        @hookimpl
        def amoeba_register_metrics(self, register):
            register(Depth())

    register_plugin(P(), "test-metrics")
    model, anatomy = tiny
    assert plugins.get("metrics", "test-depth").score(model, anatomy, "layer").tolist() == [0, 1, 2, 3]
    assert plugins.owner("metrics", "test-depth") == "test-metrics"


class _ListExporter(Exporter):
    name = "test-list"
    description = "writes the kept layer indices"

    def check(self, request):
        return None if request.plan.layers else "the plan keeps no layer"

    def write(self, request, directory):
        (directory / "layers.txt").write_text(" ".join(str(l.index) for l in request.plan.layers))


def test_hook_amoeba_register_exporters(register_plugin, tiny, tmp_path):
    class P:
        @hookimpl
        def amoeba_register_exporters(self, register):
            register(_ListExporter())

    register_plugin(P(), "test-exporters")
    model, anatomy = tiny
    out = export("test-list", ExportRequest(model, anatomy, Plan([LayerPlan(0), LayerPlan(2)])), tmp_path / "out")
    assert (out / "layers.txt").read_text() == "0 2"
    with pytest.raises(Exception, match="keeps no layer"):
        export("test-list", ExportRequest(model, anatomy, Plan([])), tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_hook_amoeba_register_architectures(register_plugin):
    class ToyAdapter(ArchitectureAdapter):
        name = "toy"
        model_types = ("toy",)

        def anatomy(self, model):
            return Anatomy(family="toy", model_type="toy", hidden_size=4, vocab_size=10, layers=(),
                           embed="embed", final_norm="norm", lm_head="head", layers_path="layers",
                           tied_embeddings=False)

    toy = types.SimpleNamespace(config=types.SimpleNamespace(model_type="toy"))
    with pytest.raises(UnsupportedModelError, match="'toy' is not supported"):
        get_adapter(toy)

    class P:
        @hookimpl
        def amoeba_register_architectures(self, register):
            register(ToyAdapter())

    register_plugin(P(), "test-architectures")
    assert isinstance(get_adapter(toy), ToyAdapter)
    assert anatomy_of(toy).family == "toy"


def test_hook_amoeba_register_evaluators(register_plugin):
    class Constant(_optional("amoeba_plugin.eval", "Evaluator")):
        name = "test-constant"
        description = "always 1"

        def __call__(self, model, **kwargs):
            return 1.0

    class P:
        @hookimpl
        def amoeba_register_evaluators(self, register):
            register(Constant())

    register_plugin(P(), "test-evaluators")
    assert plugins.get("evaluators", "test-constant")(None) == 1.0
    assert plugins.owner("evaluators", "test-constant") == "test-evaluators"


def test_hook_amoeba_register_datasets(register_plugin):
    class Lines(_optional("amoeba_plugin.data", "TextSource")):
        name = "test-lines"
        description = "three lines"

        def texts(self, split="train"):
            return ["one", "two", "three"]

    class P:
        @hookimpl
        def amoeba_register_datasets(self, register):
            register(Lines())

    register_plugin(P(), "test-datasets")
    assert plugins.get("datasets", "test-lines").texts() == ["one", "two", "three"]
    assert plugins.owner("datasets", "test-lines") == "test-datasets"


def test_hook_amoeba_register_commands(register_plugin):
    try:
        from amoeba_plugin.cli.main import cli
    except ImportError:
        pytest.skip("amoeba_plugin.cli.main does not exist yet")
    import click
    from click.testing import CliRunner

    class P:
        @hookimpl
        def amoeba_register_commands(self, cli):
            @cli.command(name="test-hello")
            @click.argument("who")
            def hello(who):
                """Say hello (added by a plugin)."""
                click.echo(f"hello {who} from a plugin")

    register_plugin(P(), "test-commands")
    try:
        result = CliRunner().invoke(cli, ["test-hello", "amoeba"])
        assert result.exit_code == 0, result.output
        assert "hello amoeba from a plugin" in result.output
        listing = CliRunner().invoke(cli, ["--help"])
        assert "test-hello" in listing.output
    finally:
        cli.commands.pop("test-hello", None)


# ---------------------------------------------------------------------------------------- lifecycle
def test_hook_amoeba_on_plan(register_plugin, tiny):
    try:
        from amoeba_plugin.api import AmoebaPruner, PruningConfig
    except ImportError:
        pytest.skip("amoeba_plugin.api does not exist yet")
    if "uniform-magnitude" not in plugins.registry("methods"):
        pytest.skip("the built-in uniform-magnitude method is not registered yet")
    seen = []

    class Observer:
        @hookimpl
        def amoeba_on_plan(self, plan, context):
            seen.append((plan, context))
            plan.provenance["observed_by"] = "test-on-plan"  # plugins may amend the plan in place

    register_plugin(Observer(), "test-on-plan")
    model, _ = tiny
    out = AmoebaPruner.from_pretrained(model).prune(
        PruningConfig(method="uniform-magnitude", budget="0.7", calibration=None, evaluation=None))
    assert len(seen) == 1
    plan, context = seen[0]
    assert plan is out.plan and out.plan.provenance["observed_by"] == "test-on-plan"
    assert context["method"] == "uniform-magnitude"
    assert str(context["budget"]) == "params=0.7"
    assert context["anatomy"].num_layers == 4


def test_hook_amoeba_on_progress(register_plugin):
    from amoeba_plugin.progress import ProgressEvent, progress

    events = []

    class Listener:
        @hookimpl
        def amoeba_on_progress(self, event):
            events.append(event)

    register_plugin(Listener(), "test-on-progress")
    assert list(progress(range(5), stage="test-stage")) == [0, 1, 2, 3, 4]
    mine = [e for e in events if e.stage == "test-stage"]
    assert all(isinstance(e, ProgressEvent) for e in mine)
    assert mine[0].step == 0 and mine[0].total == 5
    assert mine[-1].step == mine[-1].total == 5 and mine[-1].fraction == 1.0
    assert [e.step for e in mine] == sorted(e.step for e in mine)


def test_hook_amoeba_on_export(register_plugin, tiny, tmp_path):
    calls = []

    class Watcher:
        @hookimpl
        def amoeba_on_export(self, directory, plan, exporter):
            calls.append((directory, plan, exporter.name, sorted(p.name for p in directory.iterdir())))

        @hookimpl
        def amoeba_register_exporters(self, register):
            register(_ListExporter())

    register_plugin(Watcher(), "test-on-export")
    model, anatomy = tiny
    plan = Plan([LayerPlan(1), LayerPlan(3)])
    dest = export("test-list", ExportRequest(model, anatomy, plan), tmp_path / "mine")
    assert calls == [(dest, plan, "test-list", ["layers.txt"])]  # called after the atomic rename

    if "plan" not in plugins.registry("exporters"):
        pytest.skip("the built-in 'plan' exporter is not registered yet")
    dest = export("plan", ExportRequest(model, anatomy, plan), tmp_path / "plan")
    assert calls[-1][0] == dest and calls[-1][1] is plan and calls[-1][2] == "plan"
    assert Plan.load(dest).to_dict()["layers"] == plan.to_dict()["layers"]


def test_hook_amoeba_select_evaluator(register_plugin):
    chosen = types.SimpleNamespace(name="test-chosen")

    class Passes:
        @hookimpl
        def amoeba_select_evaluator(self, method, context):
            return None

    class Chooses:
        @hookimpl
        def amoeba_select_evaluator(self, method, context):
            return chosen if method == "needs-an-evaluator" else None

    register_plugin(Chooses(), "test-chooses")
    register_plugin(Passes(), "test-passes")  # called first (pluggy calls the last registered first) and passes
    hook = plugins.hook()
    assert hook.amoeba_select_evaluator(method="needs-an-evaluator", context={}) is chosen
    assert hook.amoeba_select_evaluator(method="another", context={}) is None


def test_hook_amoeba_load_model(register_plugin):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from amoeba_plugin.errors import AmoebaError
    from amoeba_plugin.eval.lm_eval_model import AmoebaLM
    from amoeba_plugin.models import load_model

    calls = []

    class Bundles:
        @hookimpl
        def amoeba_load_model(self, spec, options):
            if not spec.startswith("test-bundle:"):
                return None  # not ours: other plugins may answer
            calls.append((spec, dict(options)))
            return load_model("amoeba-tiny-sotu", dtype=options["dtype"], device=options["device"])

    class Passes:
        @hookimpl
        def amoeba_load_model(self, spec, options):
            return None

    with pytest.raises(AmoebaError, match="no plugin can load bundle 'test-bundle:tiny'"):
        AmoebaLM(bundle="test-bundle:tiny", device="cpu")
    register_plugin(Bundles(), "test-load-model")
    register_plugin(Passes(), "test-load-model-passes")  # called first, passes
    lm = AmoebaLM(bundle="test-bundle:tiny", shape="small", device="cpu", batch_size=2)
    assert calls == [("test-bundle:tiny", {"shape": "small", "dtype": None, "device": "cpu"})]
    info = lm.get_model_info()
    assert info["amoeba_load"] == "bundle" and info["amoeba_source"] == "test-bundle:tiny"
    assert info["amoeba_shape"] == "small" and lm.batch_size == 2
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("Fellow-Citizens of the Senate", " and"), 0)])
    assert -20 < ll < 0  # a real log-probability from the model the plugin loaded


# ---------------------------------------------------------------------------------------- meta
def test_every_hook_has_a_test():
    names = _hook_names()
    assert len(names) >= 10
    missing = [n for n in names if f"test_hook_{n}" not in globals()]
    assert not missing, f"hooks without a test_hook_<name> in {__file__}: {missing}"
    stale = [n[len("test_hook_"):] for n in globals() if n.startswith("test_hook_") and n[len("test_hook_"):] not in names]
    assert not stale, f"tests for hooks that no longer exist: {stale}"


def test_every_hook_is_documented():
    assert DOCS.exists(), "docs/hooks.md is missing"
    headings = set(re.findall(r"^## +`?([a-z_]+)`?\s*$", DOCS.read_text(), flags=re.M))
    missing = [n for n in _hook_names() if n not in headings]
    assert not missing, f"hooks without a '## <name>' section in docs/hooks.md: {missing}"
    stale = sorted(h for h in headings if h.startswith("amoeba_") and h not in _hook_names())
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"
