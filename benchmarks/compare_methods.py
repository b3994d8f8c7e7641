"""Compare pruning methods side by side: held-out perplexity against parameters, on the same tokens.

The model is loaded once; the calibration windows (seeded) and the evaluation windows of every
held-out source are cut once, so every method sees exactly the same tokens. The dense model is
evaluated once (method ``dense``, budget 1.0). Then every method runs at every budget through the
host's :func:`~amoeba_plugin.pipeline.run_method` (a :class:`~amoeba_plugin.methods.PruningContext`
whose ``calibration`` returns the preloaded windows), the plan is sliced and the sliced model is
evaluated on every held-out source (and, optionally, lm-eval tasks through the evaluator registered
as ``lm-eval``). Per run it records parameters, MACs, prune wall time, peak RSS during the prune,
whether the plan fits the budget, and whether the method left the shared model untouched.

A failing run is recorded (exception type and message) and the others go on. ``results.json`` is
rewritten after every run; started again with the same settings, runs already recorded without
error are skipped (``--force`` redoes them). Writes ``results.json``, ``results.md`` and
``quality_vs_params.png`` under ``--out``.

Usage, from the repository root: ``python -m benchmarks.compare_methods [--model amoeba-tiny-sotu]
[--methods uniform-magnitude] [--budgets 0.8,0.65,0.5] [--out benchmarks/results/compare]``. The shared
machinery (results files, peak RSS, machine info, option parsing) is in ``benchmarks/harness.py``.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import amoeba_plugin  # noqa: F401  (registers the amoeba architecture for heterogeneous slices)
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import PruningConfig, preflight
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import TextSpec, check_disjoint, eval_windows, resolve_source
from amoeba_plugin.errors import AmoebaError, UnknownNameError
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.models import load_model
from amoeba_plugin.plan import Plan
from amoeba_plugin.pipeline import RunData, run_method
from amoeba_plugin.plugins import get, owner, plugin_records, registry
from benchmarks.harness import (
    PeakRSS,
    hook_count,
    load_results,
    machine_info,
    parameter_counts,
    parse_method_options,
    restored_settings,
    split_list,
    state_checksum,
    versions,
    write_json_atomic,
)
from benchmarks.harness import jsonable as _jsonable
from benchmarks.harness import utc_now as _now

RESULTS_FORMAT = "amoeba-compare-methods"
RESULTS_VERSION = 1
DEFAULT_EVAL = "sotu:validation,brown:test,moby-dick:test"
#: settings that change the numbers: a results.json made with other values cannot be resumed
COMPAT_KEYS = ("model", "calibration", "calibration_samples", "calibration_seq_len", "seed", "eval_sources",
               "eval_seq_len", "eval_windows", "lm_eval_tasks", "lm_eval_limit", "dense_checksum",
               "calibration_sha", "eval_sha")


class ModelMutatedError(RuntimeError):
    """A method changed the shared model (weights or hooks) instead of returning a patch or a model."""


# ---------------------------------------------------------------------- arguments
def build_parser(description: str = __doc__.splitlines()[0], *, methods: str = "uniform-magnitude",
                 budgets: str = "0.8,0.65,0.5", out: str = "compare", plot: str = "quality_vs_params.png"
                 ) -> argparse.ArgumentParser:
    """The flags of a method-comparison run (model, methods, budgets, text, sizes, options, output);
    the leaderboard adds its own to these."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default="amoeba-tiny-sotu", help="a name or path for amoeba_plugin.models.load_model")
    ap.add_argument("--methods", default=methods, help="comma-separated registered method names")
    ap.add_argument("--budgets", default=budgets,
                    help="comma-separated budgets (0.5, nonembed=0.6, macs=0.5, ...); use ';' for shape budgets")
    ap.add_argument("--eval-sources", default=DEFAULT_EVAL, help="comma-separated held-out text sources")
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=32, help="windows per held-out source (0: all)")
    ap.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    ap.add_argument("--calibration", default="sotu:train", help="calibration source ('none': no calibration)")
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--calibration-seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-eval-on-calibration", action="store_true",
                    help="allow an evaluation source equal to the calibration source and split")
    ap.add_argument("--method-options", action="append", default=[], metavar="SPEC",
                    help="METHOD:key=value[,key=value], METHOD:{json} or {\"METHOD\": {...}}; repeatable")
    ap.add_argument("--lm-eval-tasks", default="", help="comma-separated lm-eval tasks (needs the lm-eval evaluator)")
    ap.add_argument("--lm-eval-limit", type=int, default=None, help="examples per lm-eval task")
    ap.add_argument("--lm-eval-evaluator", default="lm-eval", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu",
                    help="where the methods run and every model is evaluated (cpu, cuda, cuda:1, ...); the "
                         "dense model is checksummed on the CPU first, so results resume across devices")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / out)
    ap.add_argument("--force", action="store_true", help="redo runs already recorded in --out")
    ap.add_argument("--no-plot", action="store_true", help=f"skip {plot}")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


# ---------------------------------------------------------------------- bookkeeping
def _sha(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def run_key(method: str, budget: str, options: dict) -> str:
    return f"{method}|{budget}|{json.dumps(options, sort_keys=True)}"


def run_label(method: str, options: dict) -> str:
    if not options:
        return method
    return f"{method}[{','.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


def _method_origin(name: str) -> dict:
    plugin = owner("methods", name)
    record = next((r for r in plugin_records() if r.name == plugin), None)
    return {"plugin": plugin, "plugin_version": record.version if record else None}


# ---------------------------------------------------------------------- the runs
class Harness:
    def __init__(self, args, log):
        self.args = args
        self.log = log
        self.model = self.tokenizer = self.anatomy = None
        self.calibration = None
        #: the calibration text, resolved once: cuts the windows and is the plans' ``data`` record
        self.run_data: RunData | None = None
        self.windows: dict[str, torch.Tensor] = {}
        self.sources: list[str] = []
        self.checksum = ""
        self.hooks = 0
        self.lm_eval = None
        self.tasks = split_list(args.lm_eval_tasks) if args.lm_eval_tasks else []
        self.device = _device(getattr(args, "device", "cpu"))

    def load(self) -> None:
        start = time.perf_counter()
        self.model, self.tokenizer = load_model(self.args.model)
        self.anatomy = anatomy_of(self.model)
        self.checksum = state_checksum(self.model)
        self.model.to(self.device)
        self.hooks = hook_count(self.model)
        self.log(f"loaded {self.args.model} ({parameter_counts(self.model)[0]:,} parameters) "
                 f"in {time.perf_counter() - start:.1f}s")

    def prepare(self, eval_sources: list[str]) -> dict:
        """Load the model and cut the calibration and evaluation windows once; returns the settings
        measured on them (checksums of the weights and the windows), which decide whether a results
        file can be resumed."""
        self.load()
        if self.tokenizer is None:
            raise AmoebaError(f"{self.args.model} has no tokenizer, so there is no text to evaluate on",
                              "pass a model directory that holds its tokenizer")
        args, start = self.args, time.perf_counter()
        self.run_data = RunData(calibration=TextSpec.resolve(args.calibration, "calibration"),
                                calibration_samples=args.calibration_samples,
                                calibration_seq_len=args.calibration_seq_len, seed=args.seed)
        if args.calibration is not None:
            self.calibration = self.run_data.cut_calibration_windows(self.tokenizer)
        self.sources = list(eval_sources)
        for spec in eval_sources:
            self.windows[spec] = eval_windows(self.tokenizer, spec, args.eval_seq_len, args.eval_windows or None)
        self.log(f"windows: calibration {tuple(self.calibration.shape) if self.calibration is not None else 'none'}, "
                 + ", ".join(f"{s} {tuple(w.shape)}" for s, w in self.windows.items())
                 + f" ({time.perf_counter() - start:.1f}s)")
        return {"dense_checksum": self.checksum, "model_fingerprint": self.anatomy.fingerprint,
                "calibration_sha": _sha(self.calibration) if self.calibration is not None else None,
                "eval_sha": {s: _sha(w) for s, w in self.windows.items()},
                "eval_windows_used": {s: int(w.shape[0]) for s, w in self.windows.items()}}

    def reload(self) -> None:
        del self.model
        gc.collect()
        self.model, self.tokenizer = load_model(self.args.model)
        self.anatomy = anatomy_of(self.model)
        checksum = state_checksum(self.model)
        if checksum != self.checksum:
            raise AmoebaError(f"reloading {self.args.model} gave different weights than at start-up",
                              "the model files changed during the benchmark: start again")
        self.model.to(self.device)
        self.hooks = hook_count(self.model)

    def evaluate(self, model, row: dict) -> None:
        """Perplexity on every held-out source (and lm-eval tasks) into ``row``; ``row['stage']`` tracks
        where a failure happened."""
        evaluator = PerplexityEvaluator()
        row["perplexity"], row["eval"] = {}, {}
        start = time.perf_counter()
        for source, windows in self.windows.items():
            row["stage"] = f"evaluate {source}"
            out = evaluator.evaluate(model, self.tokenizer, windows=windows, source=source,
                                     batch_size=self.args.batch_size)
            row["perplexity"][source] = out["perplexity"]
            row["eval"][source] = {"tokens": out["tokens"], "windows": out["windows"]}
        row["eval_seconds"] = round(time.perf_counter() - start, 3)
        if self.tasks:
            row["stage"] = "lm-eval"
            start = time.perf_counter()
            out = self.lm_eval.evaluate(model, self.tokenizer, tasks=list(self.tasks), limit=self.args.lm_eval_limit)
            results = out.get("results", out) if isinstance(out, dict) else {}
            row["lm_eval"] = {task: {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
                              for task, metrics in results.items() if isinstance(metrics, dict)}
            if isinstance(out, dict) and isinstance(out.get("stderr"), dict):
                row["lm_eval_stderr"] = _jsonable(out["stderr"])
            row["lm_eval_seconds"] = round(time.perf_counter() - start, 3)
        row.pop("stage", None)

    def dense_row(self) -> dict:
        total, nonembed = parameter_counts(self.model)
        full = Plan.full(self.anatomy)
        row = {"key": run_key("dense", "params=1", {}), "method": "dense", "label": "dense", "options": {},
               "budget": "params=1", "budget_kind": "params", "budget_value": 1.0, "status": "ok",
               "parameters": total, "non_embedding_parameters": nonembed, "parameters_ratio": 1.0,
               "non_embedding_ratio": 1.0, "macs_per_token": full.macs_per_token(self.anatomy), "macs_ratio": 1.0,
               "fits_budget": True, "layers": self.anatomy.num_layers, "device": str(self.device)}
        try:
            self.evaluate(self.model, row)
        except Exception as exc:  # noqa: BLE001 - recorded in the row; the other runs go on
            row.update(status="error", error=_error(row.pop("stage", "evaluate"), exc))
        row["finished"] = _now()
        return row

    def prune_row(self, method, budget: Budget, options: dict, dense: dict, config: PruningConfig,
                  on_sliced: Callable[[Any, Any, dict], None] | None = None) -> dict:
        """Run ``method`` at ``budget`` through :func:`run_method`, slice, evaluate: the row. A failure at
        any stage is recorded in the row. ``on_sliced(run, sliced, row)`` runs after the evaluation, for
        a benchmark that measures more on the sliced model (its failure is the row's too)."""
        key_budget = str(budget)
        row = {"key": run_key(method.name, key_budget, options), "method": method.name,
               "label": run_label(method.name, options), "options": options, "budget": key_budget,
               "budget_kind": budget.kind, "budget_value": _budget_value(budget, dense),
               "status": "ok", "device": str(self.device), **_method_origin(method.name)}
        calibration = self.calibration

        def provide_calibration():
            return calibration.clone()  # a copy, so a method that edits its batch cannot leak into the next

        context = PruningContext(model=self.model, tokenizer=self.tokenizer, anatomy=self.anatomy, budget=budget,
                                 options=dict(options), seed=self.args.seed,
                                 calibration=provide_calibration if calibration is not None else None)
        rss = PeakRSS()

        @contextmanager
        def measured():
            """Wall time and peak RSS of the method's prune() alone (recorded even when it raises)."""
            try:
                with rss:
                    start = time.perf_counter()
                    try:
                        yield
                    finally:
                        row["prune_seconds"] = round(time.perf_counter() - start, 3)
            finally:
                row.update(rss.as_dict())

        def unchanged(result) -> None:
            """Between the prune and the plan's checks: the shared model must come back as it went in."""
            row["stage"] = "mutation check"
            message = self._check_model(method, row)
            if message:
                raise ModelMutatedError(message)
            row["stage"] = "plan"

        error = run = sliced = None
        gc.collect()
        row["stage"] = "prune"
        try:
            run = run_method(method, context, self.run_data, config=config, around_prune=measured, after_prune=unchanged)
        except Exception as exc:  # noqa: BLE001 - recorded in the row; the other runs go on
            error = _error(row["stage"], exc)
            if "model_unchanged" not in row:  # the prune itself failed: still check (and restore) the model
                message = self._check_model(method, row)
                if message:
                    error["message"] += f" [also: {message}]"

        if error is None:
            try:
                row["stage"] = "plan"
                plan, anatomy = run.plan, run.anatomy
                bound = budget.bind(anatomy)
                row["fits_budget"] = bool(bound.fits(plan))
                row["on_budget"] = bool(bound.on_budget(plan))
                row["fill"] = round(bound.fill(plan), 4) if budget.kind != "shape" else None
                summary = plan.summary(anatomy)
                row.update(layers=summary["layers"], uniform=summary["uniform"],
                           macs_per_token=summary["macs_per_token"],
                           macs_ratio=round(summary["macs_per_token"] / dense["macs_per_token"], 4))
                if run.info:
                    row["method_info"] = _jsonable(run.info)
                plans = self.args.out / "plans"
                plans.mkdir(exist_ok=True)
                plan_file = plans / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{row['label']}@{key_budget}") + ".json")
                plan_file.write_text(plan.to_json(indent=None) + "\n")  # compact: plans list every index
                row["plan_file"] = str(plan_file.relative_to(self.args.out))

                row["stage"] = "slice"
                start = time.perf_counter()
                sliced = run.slice()
                row["slice_seconds"] = round(time.perf_counter() - start, 3)
                total, nonembed = parameter_counts(sliced)
                row.update(parameters=total, non_embedding_parameters=nonembed,
                           parameters_ratio=round(total / dense["parameters"], 4),
                           non_embedding_ratio=round(nonembed / dense["non_embedding_parameters"], 4))
                self.evaluate(sliced, row)
                if on_sliced is not None:
                    on_sliced(run, sliced, row)
            except Exception as exc:  # noqa: BLE001 - recorded in the row; the other runs go on
                error = _error(row.get("stage", "?"), exc)
        row.pop("stage", None)
        if error is not None:
            row.update(status="error", error=error)
        del run, sliced
        gc.collect()
        row["finished"] = _now()
        return row

    def _check_model(self, method, row: dict) -> str | None:
        """Whether ``method`` left the shared model as it found it (weights and hooks); records
        ``model_unchanged`` and, when it did not, reloads the model and returns what it changed."""
        problems = []
        if state_checksum(self.model) != self.checksum:
            problems.append("changed the weights of the shared model")
        if hook_count(self.model) != self.hooks:
            problems.append(f"left {hook_count(self.model) - self.hooks} forward hook(s) on the shared model")
        row["model_unchanged"] = not problems
        message = None
        if problems:
            message = (f"method '{method.name}' {' and '.join(problems)} (return a patch or a new model "
                       "instead); the model was reloaded")
            self.reload()
        self.model.eval()
        return message


def _device(name: str) -> torch.device:
    """``--device`` checked before anything loads: one line when it names no device this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise AmoebaError(f"--device {name!r} is not a device ({exc})", "use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmoebaError(f"--device {name} asks for CUDA, which this machine does not have", "use --device cpu")
    return device


def _budget_value(budget: Budget, dense: dict) -> float | None:
    """The budget as a fraction of the dense model, for sorting and the table."""
    if budget.kind in ("params", "nonembed", "macs"):
        return float(budget.value)
    if budget.kind == "count":
        return round(budget.value / dense["parameters"], 4)
    return None


def _error(stage: str, exc: BaseException) -> dict:
    return {"stage": stage, "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))[-4000:]}


# ---------------------------------------------------------------------- reports
def _sorted_rows(rows: list[dict]) -> list[dict]:
    def key(r):
        value = r.get("budget_value")
        return (r["method"] != "dense", -(value if value is not None else -1.0), r["budget"], r["label"])
    return sorted(rows, key=key)


def _fmt_ppl(value) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def _primary_metric(metrics: dict) -> str | None:
    names = [k for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k]
    for prefer in ("acc_norm", "acc", "exact_match", "perplexity", "word_perplexity"):
        for name in names:
            if name.split(",")[0] == prefer:
                return name
    return names[0] if names else None


def _geo_mean(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def markdown(data: dict) -> str:
    settings = data["settings"]
    sources = settings["eval_sources"]
    rows = _sorted_rows(data["rows"])
    tasks = settings.get("lm_eval_tasks") or []
    task_metric = {}
    for task in tasks:
        for r in rows:
            metrics = (r.get("lm_eval") or {}).get(task)
            if metrics and _primary_metric(metrics):
                task_metric[task] = _primary_metric(metrics)
                break
    # per budget: the lowest perplexity on each source (bold) and the lowest geometric mean ("best")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] != "dense" and r["status"] == "ok":
            groups.setdefault(r["budget"], []).append(r)
    best_cell, best_row = set(), set()
    for members in groups.values():
        if len(members) < 2:
            continue
        for source in sources:
            scored = [(r["perplexity"].get(source), r["key"]) for r in members
                      if isinstance(r.get("perplexity", {}).get(source), (int, float))]
            if scored:
                best_cell.add((min(scored)[1], source))
        means = [(_geo_mean([r["perplexity"].get(s) for s in sources]), r["key"]) for r in members]
        means = [m for m in means if m[0] is not None]
        if means:
            best_row.add(min(means)[1])

    header = ["method", "budget", "params (ratio)", "non-emb ratio", *[f"ppl {s}" for s in sources],
              *[f"{t} ({task_metric.get(t, '?').split(',')[0]})" for t in tasks],
              "prune s", "peak RSS MiB (+Δ)", "fits", "best"]
    intro = (f"Model `{settings['model']}`; calibration `{settings['calibration']}` "
             f"({settings['calibration_samples']}×{settings['calibration_seq_len']} tokens, seed {settings['seed']}); "
             f"held-out perplexity on {settings['eval_windows'] or 'all'} windows of {settings['eval_seq_len']} "
             "tokens per source. **Bold**: lowest perplexity on that source at that budget; "
             "best: lowest geometric mean over the sources (marked only where two or more methods ran).")
    lines = [intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [r["label"], r["budget"] if r["budget_kind"] != "params" else f"{r['budget_value']:g}"]
        if isinstance(r.get("parameters"), int):
            cells.append(f"{r['parameters']:,} ({r['parameters_ratio']:.3f})")
            cells.append(f"{r['non_embedding_ratio']:.3f}")
        else:
            cells += ["—", "—"]
        for source in sources:
            value = (r.get("perplexity") or {}).get(source)
            text = _fmt_ppl(value)
            if not ok and value is None:
                text = "error"
            cells.append(f"**{text}**" if (r["key"], source) in best_cell else text)
        for task in tasks:
            value = ((r.get("lm_eval") or {}).get(task) or {}).get(task_metric.get(task, ""))
            if "perplexity" in task_metric.get(task, ""):
                cells.append(_fmt_ppl(value))
            else:
                cells.append(f"{value:.4f}" if isinstance(value, (int, float)) else "—")
        cells.append(f"{r['prune_seconds']:.2f}" if isinstance(r.get("prune_seconds"), (int, float)) else "—")
        if isinstance(r.get("peak_rss_mib"), (int, float)):
            delta = r.get("peak_rss_delta_mib")
            cells.append(f"{r['peak_rss_mib']:,.0f}" + (f" (+{delta:,.0f})" if isinstance(delta, (int, float)) else ""))
        else:
            cells.append("—")
        cells.append({True: "yes", False: "**no**"}.get(r.get("fits_budget"), "—"))
        cells.append("◀ best" if r["key"] in best_row else "")
        lines.append("| " + " | ".join(cells) + " |")
    failures = [r for r in rows if r["status"] != "ok"]
    if failures:
        lines += ["", "Failures:", ""]
        for r in failures:
            e = r["error"]
            message = " ".join(str(e["message"]).split())[:300]
            lines.append(f"- {r['label']} @ {r['budget']} ({e['stage']}): `{e['type']}: {message}`")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = data["settings"]["eval_sources"]
    rows = [r for r in data["rows"] if r["status"] == "ok" and isinstance(r.get("parameters_ratio"), (int, float))]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.8 * len(sources), 4.2), squeeze=False)
    labels = sorted({r["label"] for r in rows if r["method"] != "dense"})
    for ax, source in zip(axes[0], sources):
        for label in labels:
            points = sorted((r["parameters_ratio"], r["perplexity"][source]) for r in rows
                            if r["label"] == label and _finite((r.get("perplexity") or {}).get(source)))
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        dense = [r for r in rows if r["method"] == "dense" and _finite((r.get("perplexity") or {}).get(source))]
        for r in dense:
            ax.plot([r["parameters_ratio"]], [r["perplexity"][source]], "k*", markersize=14, label="dense")
        ax.set_yscale("log")
        ax.set_title(source)
        ax.set_xlabel("parameters kept (fraction of dense)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("perplexity (log scale)")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][0].legend(handles, names, fontsize=8)
    fig.suptitle(f"{data['settings']['model']}: held-out perplexity against parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------------- main
def _check_sources(args, eval_sources: list[str]) -> None:
    """No held-out source may be the calibration text, nor text the model (an export) was calibrated or
    trained on (unless explicitly allowed)."""
    from amoeba_plugin.data import check_unseen
    from amoeba_plugin.pipeline import recorded_texts

    seen = recorded_texts(export=args.model) if Path(str(args.model)).is_dir() else []
    for spec in eval_sources:
        check_disjoint(args.calibration, spec, args.allow_eval_on_calibration)
        check_unseen(seen, spec, args.allow_eval_on_calibration)


@dataclass
class Job:
    """One method at one budget with its options, checked by ``preflight`` before the model loads."""

    method: Any
    budget: Budget
    options: dict
    config: PruningConfig

    @property
    def key(self) -> str:
        return run_key(self.method.name, str(self.budget), self.options)

    @property
    def name(self) -> str:
        return f"{run_label(self.method.name, self.options)} @ {self.budget}"


def plan_jobs(args, methods: list[str], options: dict[str, dict]) -> tuple[list[str], list[Job]]:
    """Everything that can be checked without the model, before any heavy work: the budgets, the
    held-out sources, every method's options (``preflight``). Returns (eval sources, jobs by budget)."""
    budgets = [Budget.parse(b) for b in split_list(args.budgets)]
    eval_sources = split_list(args.eval_sources)
    if not methods or not budgets or not eval_sources:
        raise AmoebaError("--methods, --budgets and --eval-sources must each name at least one item",
                          "e.g. --methods uniform-magnitude --budgets 0.5 --eval-sources sotu:validation")
    if len(set(eval_sources)) != len(eval_sources):
        raise AmoebaError("--eval-sources names a source twice", "list each source once")
    if args.eval_windows < 0 or args.eval_seq_len < 2:
        raise AmoebaError("--eval-windows must be >= 0 and --eval-seq-len >= 2", "pass sensible sizes")
    args.calibration = None if str(args.calibration).strip().lower() in ("", "none", "off") else args.calibration
    _check_sources(args, eval_sources)
    for spec in eval_sources:
        resolve_source(spec, purpose="evaluation")
    jobs = []
    for budget in budgets:
        for name in methods:
            config = PruningConfig(method=name, budget=budget, calibration=args.calibration,
                                   calibration_samples=args.calibration_samples,
                                   calibration_seq_len=args.calibration_seq_len, seed=args.seed, evaluation=None,
                                   method_options=options.get(name, {}))
            checked = preflight(config)  # builds the method's options: names and values checked
            jobs.append(Job(checked.method, checked.budget, options.get(name, {}), config))
    return eval_sources, jobs


def run_settings(args, eval_sources: list[str], tasks: list[str]) -> dict:
    """The settings that change the numbers, as given on the command line."""
    return {"model": args.model, "calibration": args.calibration,
            "calibration_samples": args.calibration_samples, "calibration_seq_len": args.calibration_seq_len,
            "seed": args.seed, "eval_sources": eval_sources, "eval_seq_len": args.eval_seq_len,
            "eval_windows": args.eval_windows, "batch_size": args.batch_size, "lm_eval_tasks": tasks,
            "lm_eval_limit": args.lm_eval_limit if tasks else None}


def start_harness(args, log, tasks: list[str]) -> Harness:
    """A :class:`Harness` with the lm-eval evaluator looked up (an error at start-up when it is missing)."""
    harness = Harness(args, log)
    if tasks:
        try:
            harness.lm_eval = get("evaluators", args.lm_eval_evaluator)
        except UnknownNameError:
            raise AmoebaError(f"--lm-eval-tasks needs the evaluator '{args.lm_eval_evaluator}' and no plugin "
                              f"registers it (evaluators: {', '.join(sorted(registry('evaluators'))) or 'none'})",
                              "install amoeba-plugin[lm-eval] with the lm-eval integration, or drop --lm-eval-tasks"
                              ) from None
    return harness


@contextmanager
def _exclusive(lock: Path):
    """Hold an advisory lock on ``lock`` (created if missing) while the block runs; where ``fcntl`` is
    missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ResultsBook:
    """``--out``/results.json of a method-run benchmark: its rows by key, rewritten (with the markdown
    report) after every run, and resumed when started again with the same settings.

    ``check`` compares the command-line settings before the model loads; ``open`` the measured ones
    (checksums of the model and the windows) after, then keeps the earlier rows or, under ``--force``,
    starts over. ``optional`` names settings that one run may leave unset (None) without making the
    other's rows unusable (e.g. the recovery settings of a run that only ran training-free)."""

    def __init__(self, args, fmt: str, writer: str, markdown: Callable[[dict], str],
                 compat: tuple[str, ...] = COMPAT_KEYS, optional: tuple[str, ...] = ()):
        self.args, self.fmt, self.writer, self.markdown = args, fmt, writer, markdown
        self.compat, self.optional = compat + optional, optional
        self.out: Path = args.out
        self.path = self.out / "results.json"
        self.previous = load_results(self.path, fmt, writer)
        self.rows: dict[str, dict] = {}
        self.data: dict = {}

    def _differences(self, old: dict, settings: dict) -> list[str]:
        """The settings that keep rows made under ``old`` from being mixed with rows made under ``settings``."""
        return [k for k in self.compat if k in settings and _comparable(k, old.get(k)) != _comparable(k, settings[k])
                and not (k in self.optional and (old.get(k) is None or settings[k] is None))]

    def check(self, settings: dict) -> bool:
        """True when the earlier results were made with ``settings``; an error when they were not
        (False under ``--force``: start over)."""
        if self.previous is None:
            return False
        diff = self._differences(self.previous.get("settings", {}), settings)
        if diff and not self.args.force:
            raise AmoebaError(f"{self.path} holds results made with other settings ({', '.join(diff)} differ), "
                              "so they cannot be resumed", "pass another --out, or --force to start over there")
        return not diff

    def open(self, settings: dict, log) -> None:
        previous = self.previous
        command = shlex.join(["python", "-m", f"benchmarks.{Path(self.writer).stem}", *self.args.argv])
        commands = [command]
        if previous is not None:
            if self.check(settings):
                self.rows = {r["key"]: r for r in previous.get("rows", [])}
                # every run that wrote rows into this file, oldest first (a resumed run adds its own)
                earlier = previous.get("commands") or ([previous["command"]] if previous.get("command") else [])
                commands = earlier + ([command] if earlier[-1:] != [command] else [])
                for k in self.optional:  # a setting the earlier run had and this one leaves unset
                    if settings.get(k) is None:
                        settings[k] = previous.get("settings", {}).get(k)
            else:
                log(f"--force: discarding {len(previous.get('rows', []))} row(s) made with other settings")
                plans = (self.out / "plans").resolve()
                for row in previous.get("rows", []):
                    stale = (self.out / str(row.get("plan_file") or "")).resolve()
                    if stale.parent == plans and stale.suffix == ".json":  # only plan files this script wrote
                        stale.unlink(missing_ok=True)
        self.data = {"format": self.fmt, "version": RESULTS_VERSION,
                     "created": (previous or {}).get("created", _now()),
                     "command": command, "commands": commands, "settings": settings, "machine": machine_info(), "versions": versions(), "rows": []}

    def save(self) -> None:
        """Rewrite results.json and results.md, holding the folder's lock: rows that another run with the
        same settings (other ``--methods`` or ``--budgets``) recorded in the same ``--out`` meanwhile are
        kept, so two jobs can share one results file."""
        with _exclusive(self.out / ".results.lock"):
            self._take_rows_written_meanwhile()
            self.data["rows"] = _sorted_rows(list(self.rows.values()))
            self.data["updated"] = _now()
            write_json_atomic(self.path, self.data)
            (self.out / "results.md").write_text(self.markdown(self.data))

    def _take_rows_written_meanwhile(self) -> None:
        on_disk = load_results(self.path, self.fmt, self.writer)
        if on_disk is None or self._differences(on_disk.get("settings", {}), self.data["settings"]):
            return  # nothing there, or the rows a --force run with other settings is replacing
        for row in on_disk.get("rows", []):
            self.rows.setdefault(row["key"], row)  # this run's own rows win
        ours = self.data["commands"]
        self.data["commands"] = [c for c in on_disk.get("commands", []) if c not in ours] + ours

    def done(self, key: str) -> bool:
        """Whether ``key`` is recorded without error (and ``--force`` does not redo it)."""
        return key in self.rows and self.rows[key].get("status") == "ok" and not self.args.force

    def put(self, row: dict) -> None:
        self.rows[row["key"]] = row
        self.save()

    def dense(self, harness: Harness, total: int) -> dict:
        """The dense row: recorded already, or evaluated now (line 1 of ``total``)."""
        key = run_key("dense", "params=1", {})
        if self.done(key):
            harness.log(f"[1/{total}] dense: already in {self.path}, skipped")
        else:
            start = time.perf_counter()
            self.put(harness.dense_row())
            harness.log(f"[1/{total}] dense: {_progress_line(self.rows[key], harness.sources)} "
                        f"({time.perf_counter() - start:.1f}s)")
        return self.rows[key]


def open_run(args, log, fmt: str, writer: str, markdown: Callable[[dict], str], jobs_of: Callable,
             extra_settings: dict | None = None, optional: tuple[str, ...] = ()):
    """The start of a method-run benchmark: check everything (``jobs_of(args)`` returns the eval
    sources and the jobs), compare with earlier results, load the model, cut the windows once, open
    the results book. Returns (harness, book, jobs)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    eval_sources, jobs = jobs_of(args)
    tasks = split_list(args.lm_eval_tasks) if args.lm_eval_tasks else []
    harness = start_harness(args, log, tasks)
    book = ResultsBook(args, fmt, writer, markdown, optional=optional)
    settings = {**run_settings(args, eval_sources, tasks), **(extra_settings or {})}
    # settings given on the command line are compared now; those measured on the model after loading it
    book.check(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    settings.update(harness.prepare(eval_sources))
    book.open(settings, log)
    return harness, book, jobs


def run(args, log) -> int:
    def jobs_of(args):
        methods = split_list(args.methods)
        options = parse_method_options(args.method_options)
        stray = sorted(set(options) - set(methods))
        if stray:
            raise AmoebaError(f"--method-options for {', '.join(stray)}, which --methods does not list",
                              "add the method to --methods or drop its options")
        return plan_jobs(args, methods, options)

    harness, book, jobs = open_run(args, log, RESULTS_FORMAT, "compare_methods.py", markdown, jobs_of)
    total = len(jobs) + 1
    dense = book.dense(harness, total)
    failed = int(dense["status"] != "ok")  # its parameter and MAC counts are still there for the ratios
    for i, job in enumerate(jobs, start=2):
        if book.done(job.key):
            log(f"[{i}/{total}] {job.name}: already in {book.path}, skipped")
            continue
        start = time.perf_counter()
        row = harness.prune_row(job.method, job.budget, job.options, dense, job.config)
        book.put(row)
        failed += row["status"] != "ok"
        log(f"[{i}/{total}] {job.name}: {_progress_line(row, harness.sources)} ({time.perf_counter() - start:.1f}s)")
    book.save()
    if not args.no_plot:
        plot(book.data, args.out / "quality_vs_params.png")
    print(markdown(book.data), end="")
    log(f"wrote {book.path}, {args.out / 'results.md'}" + ("" if args.no_plot else f", {args.out / 'quality_vs_params.png'}"))
    return 1 if failed else 0


def _comparable(key: str, value):
    """A setting as compared for resuming: JSON round-tripped, the source list order-free."""
    value = json.loads(json.dumps(_jsonable(value)))
    return sorted(value) if key == "eval_sources" and isinstance(value, list) else value

def _progress_line(row: dict, sources: list[str]) -> str:
    parts = []
    if isinstance(row.get("prune_seconds"), (int, float)):
        parts.append(f"prune {row['prune_seconds']:.2f}s")
    if isinstance(row.get("peak_rss_mib"), (int, float)):
        parts.append(f"peak RSS {row['peak_rss_mib']:.0f} MiB")
    if isinstance(row.get("parameters_ratio"), (int, float)):
        parts.append(f"params {row['parameters_ratio']:.3f}")
    ppl = row.get("perplexity") or {}
    if ppl:
        parts.append("ppl " + ", ".join(f"{s} {_fmt_ppl(ppl[s])}" for s in sources if s in ppl))
    if row["status"] != "ok":
        e = row["error"]
        parts.append(f"FAILED in {e['stage']}: {e['type']}: {' '.join(str(e['message']).split())[:200]}")
    return "; ".join(parts)


def cli_main(argv: list[str] | None, parser: argparse.ArgumentParser, run: Callable, tag: str, name: str) -> int:
    """A method-run benchmark's ``main``: parse ``argv``, ``run(args, log)`` with progress lines
    ``[tag] ...`` on stderr (none under ``--quiet``); a start-up error is one line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return int(exc.code or 0)
    args.argv = argv

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    try:
        with restored_settings(args.quiet):
            return run(args, log)
    except AmoebaError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, build_parser(), run, "compare", "compare_methods")


if __name__ == "__main__":
    sys.exit(main())
