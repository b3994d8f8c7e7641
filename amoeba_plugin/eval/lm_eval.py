"""lm-evaluation-harness, in process, on an in-memory model; the packaged tasks; the ``amoeba`` lm-eval model.

* :class:`LMEvalEvaluator` (registered as ``"lm-eval"``) wraps a loaded model and tokenizer in lm-eval's
  ``HFLM`` (through :class:`~amoeba_plugin.eval.lm_eval_model.AmoebaLM`) and runs
  ``lm_eval.simple_evaluate`` on the named tasks. It returns *every* task's metrics.
* :func:`tasks_dir` is the folder of the packaged tasks (``amoeba_sotu_ppl``, ``amoeba_brown_ppl``,
  ``amoeba_moby_ppl``, the group ``amoeba_ppl`` and ``amoeba_sotu_cloze``), built from the shipped corpora;
  pass it to lm-eval's ``--include_path``. :func:`packaged_tasks` lists them without importing lm-eval.
* :func:`register_lm_eval_model` registers the lm-eval model ``amoeba`` lazily (a ``module:Class`` string
  in lm-eval's model registry); :func:`~amoeba_plugin.eval.model_args.load_model_args` (also importable
  from here) turns its ``--model_args`` into a model.

lm-eval is an optional dependency (``pip install 'amoeba-plugin[lm-eval]'``). This module imports it only
inside functions, so ``amoeba`` starts, and the evaluator registers, without it.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, ClassVar

from ..errors import AmoebaError, UnknownNameError
from . import Evaluator
from .logs import quiet_lm_eval
from .model_args import load_model_args, resolve_device  # noqa: F401 - importable from here, as before

from .._lm_eval_registration import MODEL_NAME, MODEL_TARGET, register_lm_eval_model  # noqa: F401 - as before
from .._lm_eval_registration import tasks_dir  # also the lm_eval.tasks entry point (pyproject.toml)
INSTALL_FIX = "pip install 'amoeba-plugin[lm-eval]' (or pip install 'lm-eval>=0.4.13')"
_TASKS = Path(tasks_dir())
#: every packaged task and group name starts with this
PREFIX = "amoeba_"


# ---------------------------------------------------------------------- packaged tasks
def _read_yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}


def packaged_tasks() -> dict[str, dict]:
    """The packaged tasks and groups by name: ``kind`` (task/group), ``output_type``, ``metrics``,
    ``tasks`` (of a group), ``description`` and ``path``. Reads the YAMLs; lm-eval is not imported."""
    found: dict[str, dict] = {}
    for path in sorted(_TASKS.glob("*.yaml")):
        cfg = _read_yaml(path)
        included: dict = {}
        if isinstance(cfg.get("include"), str):
            included = _read_yaml(path.parent / cfg["include"])
        merged = {**included, **cfg}
        meta = merged.get("metadata") or {}
        description = " ".join(str(meta.get("description", "")).split())
        if "group" in merged:
            found[merged["group"]] = {"kind": "group", "tasks": list(merged.get("task") or []),
                                      "description": description, "path": str(path)}
        elif "task" in merged:
            found[merged["task"]] = {"kind": "task", "output_type": merged.get("output_type", ""),
                                     "metrics": [m["metric"] for m in merged.get("metric_list") or []],
                                     "description": description, "path": str(path)}
    return found


# ---------------------------------------------------------------------- lm-eval plumbing
def require_lm_eval():
    """The ``lm_eval`` module, or an AmoebaError saying how to install it."""
    try:
        import lm_eval
    except ImportError as exc:
        raise AmoebaError(f"lm-evaluation-harness is not installed ({exc})", INSTALL_FIX) from None
    return lm_eval


def parse_tasks(tasks) -> list[str]:
    """``"a,b"``, ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    if tasks is None:
        return []
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _include_paths(include_path) -> list[str]:
    import os

    extra: list[str] = []
    for item in ([include_path] if isinstance(include_path, (str, os.PathLike)) else include_path or []):
        extra += [p for p in str(item).split(os.pathsep) if p]
    for p in extra:
        if not Path(p).is_dir():
            raise AmoebaError(f"include_path {p} is not a directory", "pass a folder that holds task YAMLs")
    ours = tasks_dir()
    return [ours, *dict.fromkeys(r for r in (str(Path(p).resolve()) for p in extra) if r != ours)]


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


#: TaskManagers by (folders, include_defaults): indexing is the slow part of starting a run, and
#: search methods call the evaluator many times. Call ``_MANAGERS.clear()`` after editing task YAMLs.
_MANAGERS: dict[tuple, Any] = {}


def task_manager(names: list[str], include_path=None):
    """A ``TaskManager`` that knows the packaged tasks and ``include_path``; lm-eval's own (thousands of
    YAMLs, several seconds to index) are added only when a name is not found without them. Managers
    are cached per process. Unknown names raise :class:`UnknownNameError` with the closest known names."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = _include_paths(include_path)

    def build(defaults: bool):
        key = (tuple(paths), defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=defaults)
        return _MANAGERS[key]

    def missing_from(tm) -> list[str]:
        return [n for n in names if not _is_task_file(n) and not tm.match_tasks([n])]

    tm = build(False)
    missing = missing_from(tm)
    # lm-eval's own tasks never start with amoeba_: a typo there needs no slow look through them
    if missing and not all(n.startswith(PREFIX) for n in missing):
        tm = build(True)
        missing = missing_from(tm)
    if missing:
        close = list(dict.fromkeys(c for n in missing for c in difflib.get_close_matches(n, tm.all_tasks, n=2,
                                                                                          cutoff=0.75)))
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownNameError(
            f"no lm-eval task named {', '.join(repr(m) for m in missing)} (packaged: "
            f"{', '.join(sorted(packaged_tasks()))}; {len(tm.all_tasks)} names searched)",
            f"{hint}list the packaged tasks with `amoeba tasks` and lm-eval's with `lm-eval ls tasks`; "
            "for your own task YAMLs add their folder (include_path=, --include-path)")
    return tm


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def summarize(raw: dict) -> dict[str, Any]:
    """lm-eval's result dict -> ``results`` ``{task: {metric: value}}``, ``groups`` (the same for
    groups; empty for a group without aggregate metrics), ``group_tasks`` ``{group: [tasks]}``,
    ``stderr`` ``{task: {metric: se}}``, ``flat`` ``{"task/metric": value}`` and ``rows`` (one dict per
    task and metric: task, metric, value, stderr, n_shot). Metrics computed after a filter other than
    ``none`` are named ``metric,filter``."""
    groups = set(raw.get("groups") or {}) | set(raw.get("group_subtasks") or {})
    out: dict[str, Any] = {"results": {}, "groups": {}, "stderr": {}, "flat": {}, "rows": [],
                           "group_tasks": dict(raw.get("group_subtasks") or {})}
    n_shot = raw.get("n-shot") or {}
    for task, metrics in (raw.get("results") or {}).items():
        values, errors = {}, {}
        for key, value in metrics.items():
            if key == "alias" or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            is_stderr = metric.endswith("_stderr")
            metric = metric[: -len("_stderr")] if is_stderr else metric
            name = metric if filt == "none" else f"{metric},{filt}"
            if is_stderr:
                errors[name] = _number(value)
            else:
                values[name] = _number(value) if _number(value) is not None else value
        (out["groups"] if task in groups else out["results"])[task] = values
        out["stderr"][task] = errors
        for metric, value in sorted(values.items()):
            out["flat"][f"{task}/{metric}"] = value
            out["rows"].append({"task": task, "metric": metric, "value": value,
                                "stderr": errors.get(metric), "n_shot": n_shot.get(task)})
    return out


def format_rows(rows: list[dict]) -> list[list[str]]:
    """Rows for a plain table: task, metric, value, stderr."""
    def num(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    return [[r["task"], r["metric"], num(r["value"]), num(r["stderr"])] for r in rows]


# ---------------------------------------------------------------------- the evaluator
class LMEvalEvaluator(Evaluator):
    """lm-eval tasks on an in-memory model (no copy, no save): ``HFLM(pretrained=model, tokenizer=...)``.

    Options: ``tasks`` (list or comma string; default the packaged ``amoeba_sotu_ppl`` and
    ``amoeba_sotu_cloze``), ``limit`` (documents per task: an int, or a fraction below 1),
    ``num_fewshot``, ``batch_size`` (int or ``"auto"``; default 16: on a CPU, batching the many short
    multiple-choice requests is several times faster than lm-eval's default of 1, same numbers), ``seed`` (one int for lm-eval's python,
    numpy, torch and few-shot seeds; default lm-eval's own 0/1234/1234/1234), ``include_path`` (extra
    task folders, a list or an ``os.pathsep``-joined string), ``max_length``, ``bootstrap_iters``,
    ``verbose`` (lm-eval's log lines; default off), ``log_samples``, ``samples`` (``{task: [doc indices]}``:
    exactly these documents of each (sub)task, e.g. a seeded stratified draw; exclusive with ``limit``).

    Returns ``{"results": {task: {metric: value}}, "groups", "stderr", "flat", "rows", "tasks",
    "config", "versions", "n_samples"}`` (see :func:`summarize`), every task asked for included.
    """

    name = "lm-eval"
    description = "lm-evaluation-harness tasks in process on the in-memory model (packaged: see `amoeba tasks`)"
    defaults: ClassVar[dict] = {"tasks": ["amoeba_sotu_ppl", "amoeba_sotu_cloze"], "limit": None,
                                "num_fewshot": None, "batch_size": 16, "seed": None, "include_path": None}

    def evaluate(self, model, tokenizer, tasks=None, limit: float | None = None,
                 num_fewshot: int | None = None, batch_size: int | str = 16, seed: int | None = None,
                 include_path=None, max_length: int | None = None, bootstrap_iters: int = 100000,
                 verbose: bool = False, log_samples: bool = False,
                 samples: dict[str, list[int]] | None = None) -> dict[str, Any]:
        names = parse_tasks(tasks if tasks is not None else self.defaults["tasks"])
        if not names:
            raise AmoebaError("no lm-eval task was named", "pass tasks=['amoeba_sotu_ppl'] (see `amoeba tasks`)")
        if tokenizer is None:
            raise AmoebaError("lm-eval needs the model's tokenizer and none was given",
                              "pass the tokenizer (load_model returns it), or save one next to the model")
        if limit is not None and (limit <= 0 or (limit >= 1 and float(limit) != int(limit))):
            raise AmoebaError(f"limit must be a positive count or a fraction below 1, got {limit}",
                              "pass e.g. limit=20 or limit=0.1")
        if samples is not None and limit is not None:
            raise AmoebaError("limit and samples both choose the documents to evaluate",
                              "pass one of them: limit=N (the first N per task) or samples={task: [indices]}")
        if samples is not None and (not isinstance(samples, dict) or not all(
                isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v) for v in samples.values())):
            raise AmoebaError("samples must map task names to lists of document indices",
                              "pass e.g. samples={'amoeba_sotu_cloze': [0, 5, 9]}")
        lm_eval = require_lm_eval()
        register_lm_eval_model()
        from .lm_eval_model import AmoebaLM

        with quiet_lm_eval(not verbose):
            tm = task_manager(names, include_path)
            lm = AmoebaLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            seeds = {} if seed is None else {"random_seed": seed, "numpy_random_seed": seed,
                                             "torch_random_seed": seed, "fewshot_random_seed": seed}
            was_training = model.training
            try:
                raw = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                              samples=samples, task_manager=tm, log_samples=log_samples,
                                              bootstrap_iters=bootstrap_iters, **seeds)
            except ValueError as exc:
                if "Duplicate task" in str(exc):
                    raise AmoebaError(f"lm-eval refused the task list: {exc}",
                                      "name a group or its tasks, not both") from None
                raise
            finally:
                model.train(was_training)
        out = summarize(raw)
        out.update(tasks=names, config={"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                                        "seed": seed},
                   versions=raw.get("versions", {}), n_samples=raw.get("n-samples", {}))
        if log_samples:
            out["samples"] = raw.get("samples")
        return out


__all__ = [
    "MODEL_NAME",
    "LMEvalEvaluator",
    "load_model_args",
    "packaged_tasks",
    "parse_tasks",
    "register_lm_eval_model",
    "require_lm_eval",
    "summarize",
    "task_manager",
    "tasks_dir",
]
