"""The plugin host, tested against real packaging.

Two tiny third-party distributions are built and installed with pip into a temporary ``site``
directory: ``amoeba-demo-plugin`` (a metric and a method) and ``amoeba-broken-plugin`` (raises
ImportError when imported). Checks then run in subprocesses with that directory on PYTHONPATH, so
the entry points are found through ``importlib.metadata`` exactly as after ``pip install``.
"""
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from amoeba_plugin import plugins
from amoeba_plugin.errors import UnknownNameError
from amoeba_plugin.hookspecs import hookimpl
from amoeba_plugin.methods import Method
from amoeba_plugin.metrics import Metric
from amoeba_plugin.testing import registered_plugin

REPO = Path(__file__).resolve().parent.parent
ENV_VARS = (plugins.ENV_BLOCK, plugins.ENV_LOAD)

DEMO_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "amoeba-demo-plugin"
version = "1.2.3"

[project.entry-points.amoeba_plugin]
demo = "amoeba_demo_plugin"

[tool.setuptools]
py-modules = ["amoeba_demo_plugin"]
"""

DEMO_MODULE = '''\
"""A third-party amoeba plugin: one metric, one method."""
import torch

from amoeba_plugin import hookimpl
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.metrics import Metric
from amoeba_plugin.plan import Plan


class DemoMetric(Metric):
    name = "demo-metric"
    description = "every layer matters equally"
    units = frozenset({"layer"})

    def score(self, model, anatomy, unit, calibration=None, **options):
        return torch.ones(anatomy.num_layers)


class DemoMethod(Method):
    name = "demo-method"
    description = "keeps everything"

    def prune(self, context):
        return PruneResult(Plan.full(context.anatomy, method=self.name))


@hookimpl
def amoeba_register_metrics(register):
    register(DemoMetric())


@hookimpl
def amoeba_register_methods(register):
    register(DemoMethod())
'''

BROKEN_PYPROJECT = DEMO_PYPROJECT.replace("amoeba-demo-plugin", "amoeba-broken-plugin").replace(
    'demo = "amoeba_demo_plugin"', 'broken = "amoeba_broken_plugin"').replace(
    '"amoeba_demo_plugin"]', '"amoeba_broken_plugin"]').replace("1.2.3", "0.0.1")

BROKEN_MODULE = 'raise ImportError("amoeba_broken_plugin needs the frobnicate package, which is missing")\n'

# Runs in the subprocess: loads the plugins under several environments (plugins.reset() between
# them) and prints one JSON document describing what it saw.
PROBE = r'''
import json, os, sys, warnings
from amoeba_plugin import plugins

SCENARIOS = json.loads(sys.argv[1])
out = {}
for label, env in SCENARIOS.items():
    for key in ("AMOEBA_BLOCK_PLUGINS", "AMOEBA_LOAD_PLUGINS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    plugins.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = plugins.registry("metrics")
        methods = plugins.registry("methods")
    out[label] = {
        "metrics": sorted(metrics), "methods": sorted(methods),
        "metric_owners": {n: plugins.owner("metrics", n) for n in metrics},
        "method_owners": {n: plugins.owner("methods", n) for n in methods},
        "records": {r.name: {"origin": r.origin, "distribution": r.distribution, "version": r.version,
                             "status": r.status, "error": r.error, "registered": r.registered,
                             "hooks": r.hooks} for r in plugins.plugin_records()},
        "warnings": [str(w.message) for w in caught],
        "demo_score": (plugins.get("metrics", "demo-metric").score(None, type("A", (), {"num_layers": 3})(),
                       "layer").tolist() if "demo-metric" in metrics else None),
    }
print("PROBE-JSON:" + json.dumps(out))
'''

SCENARIOS = {
    "default": {},
    "blocked": {"AMOEBA_BLOCK_PLUGINS": "demo"},
    "none": {"AMOEBA_LOAD_PLUGINS": ""},
    "only-demo": {"AMOEBA_LOAD_PLUGINS": "demo"},
}


def _env(site: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env["AMOEBA_PROGRESS"] = "0"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the demo and the broken plugin into a fresh directory; return that directory."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment, so the test plugins cannot be built "
                    "(pip install setuptools, or pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("plugin-packaging")
    packages = []
    for name, pyproject, module_name, module in (
            ("demo", DEMO_PYPROJECT, "amoeba_demo_plugin", DEMO_MODULE),
            ("broken", BROKEN_PYPROJECT, "amoeba_broken_plugin", BROKEN_MODULE)):
        pkg = root / name
        pkg.mkdir()
        (pkg / "pyproject.toml").write_text(pyproject)
        (pkg / f"{module_name}.py").write_text(module)
        packages.append(str(pkg))
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), *packages],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the test plugins failed:\n{proc.stdout}\n{proc.stderr}"
    assert any(target.glob("amoeba_demo_plugin-1.2.3.dist-info/entry_points.txt"))
    return target


@pytest.fixture(scope="module")
def probe(site):
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(SCENARIOS)], capture_output=True, text=True,
                          env=_env(site), cwd=str(site.parent), timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("PROBE-JSON:"))
    return json.loads(line[len("PROBE-JSON:"):])


def _cli_available() -> bool:
    try:
        return importlib.util.find_spec("amoeba_plugin.cli.main") is not None
    except ModuleNotFoundError:
        return False


def _run_cli(site, *args, **env):
    if not _cli_available():
        pytest.skip("amoeba_plugin.cli.main does not exist yet")
    return subprocess.run([sys.executable, "-c", "from amoeba_plugin.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=_env(site, **env), cwd=str(site.parent), timeout=300)


# ---------------------------------------------------------------------------------------- entry points
def test_entry_point_plugin_is_discovered(probe):
    seen = probe["default"]
    assert "demo-metric" in seen["metrics"] and "demo-method" in seen["methods"]
    assert seen["metric_owners"]["demo-metric"] == "demo"
    assert seen["method_owners"]["demo-method"] == "demo"
    assert seen["metric_owners"]["magnitude"] == "amoeba_plugin.builtin.metrics"  # built-ins still there
    assert seen["demo_score"] == [1.0, 1.0, 1.0]
    rec = seen["records"]["demo"]
    assert rec["origin"] == "entry point"
    assert rec["distribution"] == "amoeba-demo-plugin" and rec["version"] == "1.2.3"
    assert rec["status"] == "loaded" and rec["error"] is None
    assert rec["registered"] == {"metrics": ["demo-metric"], "methods": ["demo-method"]}
    assert rec["hooks"] == ["amoeba_register_methods", "amoeba_register_metrics"]


def test_broken_plugin_is_reported_and_skipped(probe):
    seen = probe["default"]
    rec = seen["records"]["broken"]
    assert rec["status"] == "failed"
    assert rec["distribution"] == "amoeba-broken-plugin" and rec["version"] == "0.0.1"
    assert "ImportError" in rec["error"] and "frobnicate" in rec["error"]
    named = [w for w in seen["warnings"] if "'broken'" in w]
    assert named, seen["warnings"]
    assert "amoeba-broken-plugin" in named[0] and "frobnicate" in named[0]
    assert seen["records"]["demo"]["status"] == "loaded"  # its neighbour is unaffected
    assert rec["hooks"] == [] and rec["registered"] == {}


def test_block_plugins(probe):
    seen = probe["blocked"]
    assert seen["records"]["demo"]["status"] == "blocked"
    assert "demo-metric" not in seen["metrics"] and "demo-method" not in seen["methods"]
    assert "magnitude" in seen["metrics"]
    assert seen["records"]["broken"]["status"] == "failed"  # blocking one does not block the others


def test_load_no_external_plugins(probe):
    seen = probe["none"]
    external = {n: r for n, r in seen["records"].items() if r["origin"] == "entry point"}
    assert {"demo", "broken"} <= set(external)
    assert all(r["status"] == "not selected" for r in external.values()), external
    assert "demo-metric" not in seen["metrics"] and "magnitude" in seen["metrics"]
    assert not [w for w in seen["warnings"] if "'broken'" in w]  # not imported at all


def test_load_only_selected_plugins(probe):
    seen = probe["only-demo"]
    assert seen["records"]["demo"]["status"] == "loaded"
    assert seen["records"]["broken"]["status"] == "not selected"
    assert "demo-metric" in seen["metrics"]
    assert not [w for w in seen["warnings"] if "'broken'" in w]


def test_cli_plugins_lists_them(site):
    proc = _run_cli(site, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "1.2.3" in proc.stdout
    broken = [line for line in proc.stdout.splitlines() if line.startswith("broken")]
    assert broken and "failed" in broken[0], "failed plugins must be listed too, with their status"
    assert "frobnicate" in proc.stdout  # and with their error
    assert "Traceback" not in proc.stderr


def test_cli_methods_shows_plugin_method(site):
    proc = _run_cli(site, "methods")
    assert proc.returncode == 0, proc.stderr
    assert "demo-method" in proc.stdout
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------- in process
class _ClashMetric(Metric):
    name = "magnitude"
    units = frozenset({"layer"})


class _FreshMetric(Metric):
    name = "in-process-metric"
    units = frozenset({"layer"})


class _FreshMethod(Method):
    name = "in-process-method"


class _ClashPlugin:
    @hookimpl
    def amoeba_register_metrics(self, register):
        register(_FreshMetric())
        register(_ClashMetric())


class _GoodPlugin:
    @hookimpl
    def amoeba_register_metrics(self, register):
        register(_FreshMetric())

    @hookimpl
    def amoeba_register_methods(self, register):
        register(_FreshMethod())


def test_register_unregister_round_trip(register_plugin):
    before = {kind: set(plugins.registry(kind)) for kind in plugins.KINDS}
    register_plugin(_GoodPlugin(), "test-good")
    assert plugins.owner("metrics", "in-process-metric") == "test-good"
    assert isinstance(plugins.get("methods", "in-process-method"), _FreshMethod)
    rec = next(r for r in plugins.plugin_records() if r.name == "test-good")
    assert rec.origin == "in process" and rec.status == "loaded"
    assert rec.registered == {"metrics": ["in-process-metric"], "methods": ["in-process-method"]}
    plugins.unregister_plugin("test-good")
    assert {kind: set(plugins.registry(kind)) for kind in plugins.KINDS} == before
    records = {r.name: r for r in plugins.plugin_records()}  # re-collecting does not duplicate entries
    assert records["amoeba_plugin.builtin.metrics"].registered["metrics"].count("magnitude") == 1
    assert "test-good" not in {r.name for r in plugins.plugin_records()}
    with pytest.raises(UnknownNameError, match="in-process-method") as err:
        plugins.get("methods", "in-process-method")
    assert "uniform-magnitude" in str(err.value) or "available" in str(err.value)


def test_duplicate_name_is_refused(register_plugin):
    builtin = plugins.get("metrics", "magnitude")
    assert plugins.owner("metrics", "magnitude") == "amoeba_plugin.builtin.metrics"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_plugin(_ClashPlugin(), "test-clash")
    messages = [str(w.message) for w in caught if "clashes" in str(w.message)]
    assert messages, [str(w.message) for w in caught]
    assert "test-clash" in messages[0] and "amoeba_plugin.builtin.metrics" in messages[0]
    assert "magnitude" in messages[0]
    assert type(plugins.get("metrics", "magnitude")) is type(builtin)  # the built-in stays
    assert plugins.owner("metrics", "magnitude") == "amoeba_plugin.builtin.metrics"
    rec = next(r for r in plugins.plugin_records() if r.name == "test-clash")
    assert "clashes" in rec.error and "amoeba_plugin.builtin.metrics" in rec.error
    assert rec.registered == {"metrics": ["in-process-metric"]}  # what it registered before the clash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with registered_plugin(object(), "test-clash-neighbour"):  # re-collects every registry
            assert rec.error.count("clashes") == 1


def test_registering_without_a_name_is_refused(register_plugin):
    class Nameless:
        @hookimpl
        def amoeba_register_metrics(self, register):
            register(Metric())  # name == ""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_plugin(Nameless(), "test-nameless")
    assert any("without a string .name" in str(w.message) for w in caught)
    assert "" not in plugins.registry("metrics")


def test_unknown_registry_kind():
    with pytest.raises(ValueError, match="unknown registry kind"):
        plugins.registry("wings")


def test_builtins_are_plugins():
    records = {r.name: r for r in plugins.plugin_records()}
    for modname in plugins.BUILTIN_PLUGINS:
        assert records[modname].origin == "builtin"
    assert records["amoeba_plugin.builtin.architectures"].status == "loaded"
    assert set(plugins.registry("architectures")) >= {"llama", "mistral", "qwen2", "qwen3", "amoeba"}
