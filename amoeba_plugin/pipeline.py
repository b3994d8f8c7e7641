"""One host function runs a method: :func:`run_method`.

Every caller that prunes through the method contract (the Python API, the CLI, the benchmark
harness, a backend's own command) goes through it, so the steps around a method's ``prune`` are
written once and happen in one order::

    seed -> budget check -> method.prune -> result check (a Plan, within the budget) -> provenance
         -> amoeba_on_plan -> validate (and within the budget still)

A method therefore only decides: it does not seed, re-check its budget or write the run's
method/budget/seed/data into provenance (it still records its own choices: metric, target, ...).

:class:`RunData` is the text of one run, each spec resolved once (in ``preflight``); it feeds the
calibration windows, the evaluation windows and the single ``data`` provenance record.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import AmoebaError, DataError


class MethodResultError(AmoebaError, TypeError):
    """A method's ``prune`` returned something other than a :class:`PruneResult` holding a Plan."""


class OverBudgetError(MethodResultError):
    """A method (or an ``amoeba_on_plan`` hook) produced a plan that costs more than the run's budget."""


def check_within_budget(plan, anatomy, budget, who: str) -> None:
    """Refuse a plan over a counted budget (params, nonembed, count, macs), naming ``who`` produced it,
    the budget and the measured cost. Shape and latency budgets are not counted here (a shape is the
    method's own contract; latency is measured by the methods that accept it)."""
    if budget.kind == "shape" or budget.is_latency:
        return
    bound = budget.bind(anatomy)
    cost, target = bound.measure(plan), bound.target
    if cost <= target:
        return
    unit = "MACs per token" if budget.kind == "macs" else (
        "non-embedding parameters" if budget.kind == "nonembed" else "parameters")
    raise OverBudgetError(
        f"{who} returned a plan over its budget {budget}: it allows {target:,.0f} {unit}, the plan has "
        f"{cost:,} ({cost / bound.full:.2%} of {bound.full:,}, {cost / target - 1:+.2%} over)",
        "a method must land at or below its budget: report it to the plugin's author (see `amoeba plugins`), "
        "or pick another method (`amoeba methods`)")


@dataclass(frozen=True)
class RunData:
    """The text of one run: what it calibrates on and what it evaluates on, each a resolved
    :class:`~amoeba_plugin.data.TextSpec` (or None when off).

    Built once, before any model loads, so a run looks each spec up once; the windows and the
    provenance record all come from here, so they cannot disagree.
    """

    calibration: Any = None  # TextSpec | None
    calibration_samples: int = 32
    calibration_seq_len: int = 256
    seed: int = 0
    evaluation: Any = None  # TextSpec | None
    evaluation_windows: int = 32
    evaluation_seq_len: int = 256
    allow_calibration_overlap: bool = False

    def cut_calibration_windows(self, tokenizer):
        """The seeded calibration windows, a LongTensor ``[samples, seq_len]``."""
        if self.calibration is None:
            raise DataError("this run has no calibration text", "pass a calibration source, e.g. sotu:train")
        if tokenizer is None:
            raise DataError("calibration data needs a tokenizer and none was given",
                            "pass tokenizer= (or load the model by name so its tokenizer comes along)")
        from .data import calibration_windows

        return calibration_windows(tokenizer, self.calibration, self.calibration_samples,
                                   self.calibration_seq_len, self.seed)

    def calibration_provider(self, tokenizer) -> Callable[[], Any] | None:
        """``PruningContext.calibration``: the windows, cut on the first call only (a method that never
        asks costs no tokenization); None when calibration is off."""
        if self.calibration is None:
            return None
        from .progress import report

        cache: list = []

        def provide():
            if not cache:
                report("calibration", 0, 1)
                cache.append(self.cut_calibration_windows(tokenizer))
                report("calibration", 1, 1)
            return cache[0]

        return provide

    def cut_evaluation_windows(self, tokenizer):
        """The first ``evaluation_windows`` windows of the evaluation text (the perplexity protocol)."""
        if self.evaluation is None:
            raise DataError("this run has no evaluation text", "pass an evaluation source, e.g. sotu:validation")
        from .data import eval_windows

        return eval_windows(tokenizer, self.evaluation, self.evaluation_seq_len, self.evaluation_windows)

    def record(self, calibrated: bool) -> dict:
        """The ``data`` provenance record: the calibration text (only when the method ``calibrated``)
        and the evaluation text, as canonical ``name:split``."""
        data = {}
        if calibrated and self.calibration is not None:
            data["calibration"] = {"source": str(self.calibration), "samples": self.calibration_samples,
                                   "seq_len": self.calibration_seq_len, "seed": self.seed}
        if self.evaluation is not None:
            data["evaluation"] = {"source": str(self.evaluation), "windows": self.evaluation_windows,
                                  "seq_len": self.evaluation_seq_len}
            if self.allow_calibration_overlap:
                data["evaluation"]["allowed_calibration_overlap"] = True
        return data


@dataclass
class MethodRun:
    """What :func:`run_method` returns: the checked, recorded, validated plan and what it applies to."""

    method: Any
    result: Any  # the method's raw PruneResult
    plan: Any
    #: the model the plan applies to: the one the method returned (it trained it) or the context's
    model: Any
    anatomy: Any
    patch: dict | None = None
    info: dict = field(default_factory=dict)
    #: wall time of ``method.prune`` alone, in seconds
    seconds: float = 0.0
    #: whether the method asked for the calibration windows
    calibrated: bool = False

    def slice(self):
        """The physically smaller model: :func:`~amoeba_plugin.surgery.slice_model` with the patch."""
        from .surgery import slice_model

        return slice_model(self.model, self.anatomy, self.plan, patch=self.patch)


def run_method(method, context, data: RunData | None = None, *, config: Any = None,
               around_prune: Callable[[], AbstractContextManager] | None = None,
               after_prune: Callable[[Any], None] | None = None) -> MethodRun:
    """Run ``method`` on ``context``: seed, budget check, ``prune``, result check, provenance,
    ``amoeba_on_plan``, validation. Returns a :class:`MethodRun`; slice it with :meth:`MethodRun.slice`.

    ``data`` (the run's :class:`RunData`) gives the ``data`` provenance record; its calibration part is
    written only when the method asked for ``context.calibration``. ``config`` is passed to
    ``amoeba_on_plan`` as ``context["config"]``. Two seams for a harness that measures a method:
    ``around_prune()`` is a context manager entered around ``method.prune`` alone (timing, peak
    memory), and ``after_prune(result)`` runs right after it, before anything reads the result (e.g.
    a check that the shared model came back unchanged); either may raise to stop the run.
    """
    import torch

    from .anatomy import anatomy_of
    from .methods import PruneResult
    from .plan import Plan
    from .plugins import hook
    from .progress import report

    asked: list[bool] = []
    if context.calibration is not None:
        provide = context.calibration

        def calibration():
            asked.append(True)
            return provide()

        context = replace(context, calibration=calibration)

    torch.manual_seed(context.seed)
    method.check_budget(context.budget)
    report("prune", 0, 1, method.name)
    with around_prune() if around_prune is not None else nullcontext():
        start = time.perf_counter()
        result = method.prune(context)
        seconds = time.perf_counter() - start
    report("prune", 1, 1, method.name)
    if after_prune is not None:
        after_prune(result)

    if not isinstance(result, PruneResult) or not isinstance(result.plan, Plan):
        got = type(result).__name__ if not isinstance(result, PruneResult) else \
            f"a PruneResult holding {type(result.plan).__name__}"
        raise MethodResultError(f"method '{method.name}' returned {got}, not a PruneResult with a Plan",
                                "fix the method's prune() to return PruneResult(plan, ...) (a plugin bug)")
    plan = result.plan
    base = result.model if result.model is not None else context.model
    anatomy = anatomy_of(base) if result.model is not None else context.anatomy
    plan.validate(anatomy)
    check_within_budget(plan, anatomy, context.budget, f"method '{method.name}'")

    # the run's own facts; a value the method recorded itself wins (older plugins still write them)
    plan.provenance = {"method": method.name, "budget": str(context.budget), "seed": context.seed,
                       **(plan.provenance or {})}
    record = data.record(calibrated=bool(asked)) if data is not None else {}
    if record:  # merged with what the method recorded itself (e.g. its training text: record_seen_text)
        recorded = plan.provenance.setdefault("data", {})
        for key, value in record.items():
            recorded.setdefault(key, value)

    options = method.resolve_options(context).to_dict()  # the run's options, defaults filled in
    hook().amoeba_on_plan(plan=plan, context={"method": method.name, "budget": context.budget, "anatomy": anatomy,
                                              "model": base, "config": config, "options": options})
    plan.validate(anatomy)
    check_within_budget(plan, anatomy, context.budget, f"method '{method.name}' (after amoeba_on_plan)")
    return MethodRun(method=method, result=result, plan=plan, model=base, anatomy=anatomy, patch=result.patch,
                     info=dict(result.info or {}), seconds=seconds, calibrated=bool(asked))


# ---------------------------------------------------------------------- reading the record back
def recorded_calibration(record: dict | None) -> str | None:
    """The calibration text (``name:split``) in a plan's provenance or an export's info, or None.

    Reads the one ``data`` record :func:`run_method` writes: ``record["data"]["calibration"]["source"]``.
    """
    data = (record or {}).get("data")
    calibration = data.get("calibration") if isinstance(data, dict) else None
    source = calibration.get("source") if isinstance(calibration, dict) else None
    return source if isinstance(source, str) else None


def recorded_training(record: dict | None) -> list[str]:
    """The texts a recovery trained the model on, as recorded in ``record["data"]["recovery"]`` (one
    record or a list, each with ``sources``), canonical ``name:split``."""
    data = (record or {}).get("data")
    runs = data.get("recovery") if isinstance(data, dict) else None
    runs = runs if isinstance(runs, list) else [runs] if isinstance(runs, dict) else []
    out = []
    for run in runs:
        sources = run.get("sources") if isinstance(run, dict) else None
        out += [s for s in (sources if isinstance(sources, list) else []) if isinstance(s, str) and s not in out]
    return out


def calibration_texts(plan=None, export: str | os.PathLike | None = None) -> list[str]:
    """The texts a plan and/or an export directory (its ``amoeba_export.json``) record the model saw:
    the calibration text, and the training text of any recovery, so evaluation can refuse them."""
    from .export.writers import EXPORT_INFO

    found = []
    if export is not None:
        path = Path(export) / EXPORT_INFO
        if path.is_file():
            try:
                info = json.loads(path.read_text()).get("info", {})
            except (OSError, ValueError, AttributeError):
                info = {}
            info = info if isinstance(info, dict) else {}
            found.append(recorded_calibration(info))
            found += recorded_training(info)
    if plan is not None:
        found.append(recorded_calibration(plan.provenance))
        found += recorded_training(plan.provenance)
    return [f for f in found if f is not None]


def _export_records(export: str | os.PathLike) -> list[dict]:
    """The provenance records of an export directory: its ``amoeba_export.json`` info and ``plan.json``."""
    from .export.writers import EXPORT_INFO

    records = []
    for name, pick in ((EXPORT_INFO, lambda d: d.get("info")), ("plan.json", lambda d: d.get("provenance"))):
        path = Path(export) / name
        if not path.is_file():
            continue
        try:
            record = pick(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def recorded_texts(plan=None, export: str | os.PathLike | None = None) -> list[dict]:
    """Every text a plan and/or an export directory record their model saw, calibrating or training
    (``[{"source", "role", "by"?}]``, see :mod:`amoeba_plugin.data.overlap`): what evaluation refuses."""
    from .data.overlap import seen_texts

    records = _export_records(export) if export is not None and Path(export).is_dir() else []
    if plan is not None:
        records.append(plan.provenance or {})
    found: list[dict] = []
    for record in records:
        for entry in seen_texts(record):
            if entry not in found:
                found.append(entry)
    return found


def inherit_texts(record: dict, source_model: str | os.PathLike | None) -> dict:
    """Copy into ``record`` the texts ``source_model`` (an export directory) saw, so a model made from
    a trained or calibrated model still refuses that text; returns ``record``."""
    from .data.overlap import record_seen_text

    if source_model is None or not Path(source_model).is_dir():
        return record
    for entry in recorded_texts(export=source_model):
        by = f"{entry['by']}, " if entry.get("by") else ""
        record_seen_text(record, [entry["source"]], entry["role"], by=f"{by}source model".strip(", "))
    return record


__all__ = ["MethodResultError", "MethodRun", "OverBudgetError", "RunData", "calibration_texts", "check_within_budget",
           "inherit_texts", "recorded_calibration", "recorded_texts", "recorded_training", "run_method"]
