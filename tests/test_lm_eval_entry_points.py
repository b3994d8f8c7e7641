"""The ``lm_eval.models`` and ``lm_eval.tasks`` entry points that pyproject.toml declares.

lm-eval after 0.4.13 reads them (EleutherAI/lm-evaluation-harness#4013, merged: models; #4015, open:
tasks); the installed 0.4.13 reads neither. So the entry points are read from pyproject.toml (the venv's
metadata is main's until ``pip install -e . --no-deps``), turned into real ``importlib.metadata``
EntryPoints, resolved as #4013 resolves them (a placeholder in lm-eval's own ``Registry``, loaded on
first ``get``), and each target is checked in the installed lm-eval: the model class builds from
``--model_args`` and scores a request, the task folder indexes and loads through ``TaskManager``.
"""
import importlib.metadata as md
import math
import tomllib
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import Registry, get_model, model_registry  # noqa: E402

from amoeba_plugin._lm_eval_registration import (  # noqa: E402
    MODEL_NAME,
    MODEL_TARGET,
    register_lm_eval_model,
    tasks_dir,
)
from amoeba_plugin.eval.lm_eval_model import AmoebaLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = {"amoeba_sotu_ppl", "amoeba_brown_ppl", "amoeba_moby_ppl", "amoeba_ppl", "amoeba_sotu_cloze",
            "amoeba_sotu_cloze_calib"}


def declared(group: str) -> list[md.EntryPoint]:
    """The entry points of ``group`` in pyproject.toml, as the EntryPoint objects lm-eval would get."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"].get(group, {})
    return [md.EntryPoint(name=name, value=value, group=group) for name, value in table.items()]


def discover(registry: Registry, entry_points: list[md.EntryPoint]) -> list[str]:
    """#4013's ``load_plugins(group, registry)`` as its tests pin it down (lm-evaluation-harness
    ``tests/test_plugins.py``; ``docs/plugins.md``): a name already registered is skipped, the others
    are stored as EntryPoint placeholders that ``registry.get`` loads on first use. (Its once-per-group
    guard and its tolerance of a failing ``entry_points()`` call do not matter here.)"""
    found = []
    for ep in entry_points:
        if ep.name not in registry:
            registry.register(ep.name, target=ep)
            found.append(ep.name)
    return found


# ---------------------------------------------------------------------- lm_eval.models
def test_model_entry_point_resolves_to_the_amoeba_lm_class():
    (ep,) = declared("lm_eval.models")
    assert (ep.name, ep.value) == (MODEL_NAME, MODEL_TARGET)  # the same target as the import-time registration
    registry = Registry("model", base_cls=LM)  # what lm-eval's model_registry is
    assert discover(registry, [ep]) == ["amoeba"]
    assert isinstance(registry._objs["amoeba"], md.EntryPoint)  # a placeholder until asked for
    cls = registry.get("amoeba")
    assert cls is AmoebaLM and issubclass(cls, LM)


def test_model_from_the_entry_point_builds_from_model_args_and_scores():
    (ep,) = declared("lm_eval.models")
    registry = Registry("model", base_cls=LM)
    discover(registry, [ep])
    # how lm-eval's simple_evaluate builds a model named on the command line
    lm = registry.get("amoeba").create_from_arg_string("pretrained=amoeba-tiny-sotu,device=cpu,max_length=256",
                                                         {"batch_size": 2})
    request = Instance(request_type="loglikelihood", doc={}, idx=0,
                       arguments=("Mr. Speaker, the state of the", " Union"))
    ((logprob, greedy),) = lm.loglikelihood([request], disable_tqdm=True)
    assert math.isfinite(logprob) and logprob < 0 and isinstance(greedy, bool)


def test_entry_point_and_import_registration_agree_in_either_order():
    """``import amoeba_plugin`` registers ``amoeba`` as a ``module:Class`` string; a newer lm-eval may
    have stored the entry point first. Neither order raises, and both give AmoebaLM."""
    (ep,) = declared("lm_eval.models")
    assert register_lm_eval_model()
    assert discover(model_registry, [ep]) == []  # already registered at import: the entry point is skipped
    assert get_model("amoeba") is AmoebaLM
    saved = model_registry._objs.pop("amoeba")
    try:
        assert discover(model_registry, [ep]) == ["amoeba"]  # lm-eval first ...
        assert register_lm_eval_model()  # ... then `import amoeba_plugin`: leaves it alone
        assert isinstance(model_registry._objs["amoeba"], md.EntryPoint)
        assert get_model("amoeba") is AmoebaLM
    finally:
        model_registry._objs["amoeba"] = saved


# ---------------------------------------------------------------------- lm_eval.tasks
def test_tasks_entry_point_gives_the_packaged_task_folder():
    """#4015 is open and its contract is not settled: the entry point names :func:`tasks_dir`, a
    function that returns the folder, the one ``amoeba-lm-eval`` adds to ``--include_path``."""
    from lm_eval.tasks import TaskManager

    (ep,) = declared("lm_eval.tasks")
    assert ep.name == "amoeba"
    target = ep.load()
    assert target is tasks_dir
    folder = target()
    assert Path(folder).is_dir()
    tm = TaskManager(include_path=folder, include_defaults=False)
    assert PACKAGED <= set(tm.all_tasks)
    loaded = tm.load(["amoeba_sotu_cloze"])  # builds the dataset from the shipped corpora
    task = loaded["tasks"]["amoeba_sotu_cloze"]
    assert len(list(task.eval_docs)) == 200


# ---------------------------------------------------------------------- installed metadata
@pytest.mark.parametrize("group", ["lm_eval.models", "lm_eval.tasks"])
def test_installed_metadata_matches_pyproject(group):
    try:
        dist = md.distribution("amoeba-plugin")
    except md.PackageNotFoundError:
        pytest.skip("amoeba-plugin is not installed")
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == group}
    if not installed:
        pytest.skip(f"the installed amoeba-plugin metadata has no {group} entry points yet: pip install -e . --no-deps")
    assert installed == {ep.name: ep.value for ep in declared(group)}
