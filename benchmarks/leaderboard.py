"""One leaderboard: every registered method, baselines and backends alike, on the same tokens.

Built on the method-comparison harness (``benchmarks/compare_methods.py``): the model is loaded once,
the calibration windows and the held-out windows of every source are cut once, the dense model is
evaluated once, and every method runs at every budget through the one method pipeline
(:func:`~amoeba_plugin.pipeline.run_method`) with the options of ``benchmarks/leaderboard_presets.py``
for this model (``--method-options`` wins over a preset). Per row it records held-out perplexity per
source and their geometric mean, parameters and MACs reached (and their ratios), the budget fill
(measured / target) and whether the row is on budget (within ``FILL_TOLERANCE`` below, never above:
an off-budget row is kept and marked), prune wall time and peak RSS, and the decode speed of the
export (exported, reloaded with stock ``AutoModelForCausalLM``, greedy tokens/s, median of repeats)
against the dense model measured alongside it in the same process.

Two regimes: ``free`` (training-free, the sliced model as it comes out of the method) and
``recovered`` (the same sliced model after the same fixed recovery budget, distilled from the dense
model through :func:`amoeba_plugin.recovery.recover`; ``--recovery tokens=N,...``).

Writes ``results.json`` (settings, versions, machine, rows; resumable: rows already recorded are
skipped), ``results.md`` (a table per budget and regime sorted by the geometric mean, best marked),
``perplexity_vs_params.png`` and ``perplexity_vs_speed.png`` (Pareto fronts) under ``--out``.

Usage, from the repository root: ``python -m benchmarks.leaderboard --model amoeba-tiny-sotu
--regimes free --out benchmarks/results/leaderboard_tiny`` (see benchmarks/README.md).
"""
from __future__ import annotations

import copy
import gc
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from amoeba_plugin.budget import FILL_TOLERANCE, Budget
from amoeba_plugin.cli.options import parse_options
from amoeba_plugin.data import check_disjoint
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plugins import BUILTIN_PLUGINS, registry
from benchmarks.compare_methods import (
    _error,
    _finite,
    _fmt_ppl,
    _geo_mean,
    _progress_line,
    build_parser as method_run_parser,
    cli_main,
    open_run,
    plan_jobs,
    run_key,
    run_label,
)
from benchmarks.harness import PeakRSS, decode_speeds, export_and_reload, parse_method_options, split_list
from benchmarks.harness import utc_now as _now
from benchmarks.leaderboard_presets import preset

RESULTS_FORMAT = "amoeba-leaderboard"
REGIMES = ("free", "recovered")
DEFAULT_BUDGETS = "0.8,0.7,0.5,nonembed=0.8,nonembed=0.7,nonembed=0.5"
#: the fixed recovery budget every method gets in the recovered regime, unless --recovery says otherwise
DEFAULT_RECOVERY = "tokens=65536,loss=distill,source=sotu:train,seq_len=256,batch_size=4,seed=0"
PLOTS = ("perplexity_vs_params.png", "perplexity_vs_speed.png")
BASELINES = "baselines"  # the summary's reference: the baselines plugin and the host's own methods
#: what a recovered row takes over from its training-free row: the same plan, shape and export
CARRIED = ("method", "label", "device", "options", "preset", "budget", "budget_kind", "budget_value", "plugin",
           "plugin_version", "fits_budget", "on_budget", "fill", "layers", "uniform", "macs_per_token",
           "macs_ratio", "plan_file", "parameters", "non_embedding_parameters", "parameters_ratio",
           "non_embedding_ratio", "prune_seconds", "peak_rss_mib", "rss_start_mib", "peak_rss_delta_mib",
           "rss_measure", "method_info", "decode_tokens_per_s", "dense_decode_tokens_per_s", "decode_speedup",
           "decode_runs", "export_architecture", "export_mib")


def build_parser():
    ap = method_run_parser(__doc__.splitlines()[0], methods="all", budgets=DEFAULT_BUDGETS, out="leaderboard",
                           plot=" and ".join(PLOTS))
    ap.add_argument("--regimes", default="free,recovered",
                    help="comma-separated: free (training-free), recovered (after --recovery)")
    ap.add_argument("--recovery", default=DEFAULT_RECOVERY, metavar="KEY=VALUE,...",
                    help="RecoveryConfig options for the recovered regime, as `amoeba prune --recover` reads them "
                         "(the teacher is the dense model)")
    ap.add_argument("--no-presets", action="store_true",
                    help="run every method on its defaults (ignore benchmarks/leaderboard_presets.py)")
    ap.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded per speed measurement")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length for the speed measurement")
    ap.add_argument("--decode-repeats", type=int, default=3,
                    help="interleaved rounds of the speed measurement (median; 0: do not measure speed)")
    return ap


# ---------------------------------------------------------------------- start-up
def _recovery_config(text: str):
    """``--recovery`` read as ``amoeba prune --recover`` reads it (the recovery module's own pair reader,
    where a comma-separated source mixture stays one value; else the CLI kit's ``parse_options``) into
    a typed ``RecoveryConfig``. Imported only here, so the training-free regime runs without it."""
    try:
        import amoeba_plugin.recovery as recovery
    except ImportError as exc:
        raise AmoebaError(f"the recovered regime needs amoeba_plugin.recovery, which this install lacks ({exc})",
                          "pass --regimes free, or install a version of amoeba-plugin with recovery") from None
    read = getattr(recovery, "parse_pairs", None) or (lambda t: parse_options(p for p in t.split(",") if p.strip()))
    return recovery.RecoveryConfig.from_dict(read(text))


def _regimes(text: str) -> list[str]:
    regimes = split_list(text)
    unknown = [r for r in regimes if r not in REGIMES]
    if not regimes or unknown or len(set(regimes)) != len(regimes):
        raise AmoebaError(f"--regimes {text!r} must name each of {', '.join(REGIMES)} at most once",
                          "e.g. --regimes free or --regimes free,recovered")
    return regimes


def row_key(method: str, budget: Budget, options: dict, regime: str) -> str:
    return f"{run_key(method, str(budget), options)}|{regime}"


# ---------------------------------------------------------------------- measuring a row
class Board:
    """The leaderboard's own measurements on top of the comparison harness: decode speed, recovery."""

    def __init__(self, harness, args, recovery):
        self.harness, self.args, self.recovery = harness, args, recovery
        first = next(iter(harness.windows.values()))
        self.prompt = first[:1, : args.prompt_tokens].clone().to(harness.device)

    def decode(self, run, sliced, row: dict) -> None:
        """Export the plan, reload it as a user would and time greedy decoding against the dense
        model, side by side; a failure is recorded as ``decode_error`` (the quality numbers stand)."""
        if self.args.decode_repeats <= 0:
            return
        from amoeba_plugin.export import ExportRequest

        request = ExportRequest(model=run.model, anatomy=run.anatomy, plan=run.plan, tokenizer=self.harness.tokenizer,
                                patch=run.patch, info={"source_model": self.args.model}, sliced=sliced)
        try:
            with tempfile.TemporaryDirectory(prefix="leaderboard-") as tmp:
                model, architecture, mib = export_and_reload(request, Path(tmp) / "export")
                model.to(self.harness.device)  # timed where the dense model runs
                speeds = decode_speeds({"dense": self.harness.model, "export": model}, self.prompt,
                                       self.args.decode_tokens, self.args.decode_repeats)
                del model
        except Exception as exc:  # noqa: BLE001 - recorded; the perplexity of the row stands
            row["decode_error"] = _error("decode", exc)
            return
        dense, export = speeds["dense"]["tokens_per_s"], speeds["export"]["tokens_per_s"]
        row.update(decode_tokens_per_s=export, dense_decode_tokens_per_s=dense,
                   decode_speedup=round(export / dense, 3), decode_runs=speeds,
                   export_architecture=architecture, export_mib=mib)

    def dense_decode(self, row: dict) -> None:
        if self.args.decode_repeats > 0 and "decode_tokens_per_s" not in row:
            speeds = decode_speeds({"dense": self.harness.model}, self.prompt, self.args.decode_tokens,
                                   self.args.decode_repeats)
            row.update(decode_tokens_per_s=speeds["dense"]["tokens_per_s"], decode_speedup=1.0,
                       decode_runs=speeds)

    def recovered(self, free: dict, sliced, key: str) -> dict:
        """The recovered row: a copy of the sliced model trained under the fixed recovery budget with
        the dense model as teacher, then evaluated on the same held-out windows."""
        from amoeba_plugin.recovery import recover

        harness = self.harness
        row = {"key": key, **{k: free[k] for k in CARRIED if k in free}, "regime": "recovered", "status": "ok",
               "recovery": self.recovery.to_dict()}
        row["stage"] = "recovery"
        student = None
        try:
            if free["status"] != "ok":
                raise RuntimeError(f"the training-free run failed ({free['error']['stage']}), nothing to recover")
            student = copy.deepcopy(sliced)  # the free row's model stays as it was; no weight shared with the teacher
            with PeakRSS() as rss:
                result = recover(student, harness.model, harness.tokenizer, self.recovery,
                                 progress=False if self.args.quiet else None)
            student = result.model
            last = result.log[-1] if result.log else {}
            row.update(recovery_tokens=result.tokens, recovery_seconds=round(result.wall_s, 2),
                       recovery_final=_json_safe(last), recovery_peak_rss_mib=rss.as_dict()["peak_rss_mib"])
            row["stage"] = "mutation check"
            message = harness._check_model(SimpleNamespace(name="recovery"), row)
            if message:
                raise RuntimeError(message)
            harness.evaluate(student, row)
        except Exception as exc:  # noqa: BLE001 - recorded in the row; the other runs go on
            row.update(status="error", error=_error(row.get("stage", "recovery"), exc))
        row.pop("stage", None)
        del student
        gc.collect()
        return row


def _json_safe(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if isinstance(v, (int, float, str, bool)) or v is None}


def finish_row(row: dict, sources: list[str]) -> dict:
    """The geometric mean of the held-out perplexities (only when every source has one) and the time."""
    ppl = row.get("perplexity") or {}
    values = [ppl.get(s) for s in sources]
    row["ppl_geo_mean"] = _geo_mean(values) if all(_finite(v) for v in values) else None
    row["finished"] = _now()
    return row


# ---------------------------------------------------------------------- the run
def run(args, log) -> int:
    regimes = _regimes(args.regimes)
    recovery = _recovery_config(args.recovery) if "recovered" in regimes else None
    if args.decode_repeats < 0 or args.decode_tokens < 1 or args.prompt_tokens < 1:
        raise AmoebaError("--decode-repeats must be >= 0, --decode-tokens and --prompt-tokens >= 1",
                          "e.g. --decode-repeats 3 --decode-tokens 32")
    if recovery is not None:  # the recovery text may not be a held-out source either
        for spec in split_list(args.eval_sources):
            for source in str(recovery.source).split(","):
                try:
                    check_disjoint(source.strip(), spec, args.allow_eval_on_calibration)
                except AmoebaError:
                    raise AmoebaError(f"--recovery trains on '{source.strip()}', which --eval-sources holds out "
                                      f"('{spec}')", "train on other text, e.g. source=sotu:train") from None
    given = parse_method_options(args.method_options)
    labels: dict[str, str] = {}

    def jobs_of(args):
        methods = sorted(registry("methods")) if args.methods.strip() == "all" else split_list(args.methods)
        stray = sorted(set(given) - set(methods))
        if stray:
            raise AmoebaError(f"--method-options for {', '.join(stray)}, which --methods does not list",
                              "add the method to --methods or drop its options")
        options = {}
        for name in methods:
            options[name] = {**({} if args.no_presets else preset(args.model, name)), **given.get(name, {})}
            labels[name] = run_label(name, given.get(name, {}))
        return plan_jobs(args, methods, options)

    extra = {"regimes": regimes, "budgets": [str(Budget.parse(b)) for b in split_list(args.budgets)],
             "recovery": recovery.to_dict() if recovery is not None else None,
             "decode": {"tokens": args.decode_tokens, "prompt_tokens": args.prompt_tokens,
                        "repeats": args.decode_repeats},
             "fill_tolerance": FILL_TOLERANCE}
    harness, book, jobs = open_run(args, log, RESULTS_FORMAT, "leaderboard.py", markdown, jobs_of, extra,
                                   optional=("recovery",))
    board = Board(harness, args, recovery)
    total = len(jobs) * len(regimes) + 1
    dense = book.dense(harness, total)
    if "ppl_geo_mean" not in dense or "decode_tokens_per_s" not in dense:
        board.dense_decode(dense)
        book.put(finish_row(dense, harness.sources))
    failed = int(dense["status"] != "ok")
    done = 1
    for job in jobs:
        keys = {r: row_key(job.method.name, job.budget, job.options, r) for r in regimes}
        todo = [r for r in regimes if not book.done(keys[r])]
        for r in regimes:
            if r not in todo:
                done += 1
                log(f"[{done}/{total}] {job.name} ({r}): already in {book.path}, skipped")
        if not todo:
            continue
        extra_rows: list[dict] = []

        def on_sliced(run, sliced, row, todo=todo, keys=keys, extra_rows=extra_rows):
            row["stage"] = "decode speed"
            board.decode(run, sliced, row)
            if "recovered" in todo:
                finish_row(row, harness.sources)
                extra_rows.append(board.recovered(row, sliced, keys["recovered"]))

        start = time.perf_counter()
        free = harness.prune_row(job.method, job.budget, job.options, dense, job.config, on_sliced=on_sliced)
        free.update(key=keys.get("free", row_key(job.method.name, job.budget, job.options, "free")),
                    label=labels[job.method.name], regime="free", preset=preset(args.model, job.method.name)
                    if not args.no_presets else {})
        finish_row(free, harness.sources)
        if "recovered" in todo and not extra_rows:  # the free run failed before recovery could start
            extra_rows.append(board.recovered(free, None, keys["recovered"]))
        rows = ([free] if "free" in todo else []) + [finish_row(r, harness.sources) for r in extra_rows]
        for row in rows:
            row.update(label=free["label"], preset=free["preset"])
            book.put(row)
            done += 1
            failed += row["status"] != "ok"
            log(f"[{done}/{total}] {job.name} ({row['regime']}): {_progress_line(row, harness.sources)}"
                + (f"; fill {row['fill']:.3f}" if isinstance(row.get("fill"), float) else "")
                + f" ({time.perf_counter() - start:.1f}s)")
    book.save()
    if not args.no_plot:
        plot(book.data, args.out)
    print(markdown(book.data), end="")
    log(f"wrote {book.path}, {args.out / 'results.md'}"
        + ("" if args.no_plot else "".join(f", {args.out / p}" for p in PLOTS)))
    return 1 if failed else 0


# ---------------------------------------------------------------------- reports
def _ratio(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


def _speed(row: dict) -> str:
    rate = row.get("decode_tokens_per_s")
    if not isinstance(rate, (int, float)):
        return "error" if row.get("decode_error") else "—"
    return f"{rate:.1f} ({row.get('decode_speedup', 1.0):.2f}×)"


def _budget_cell(row: dict) -> str:
    fill = row.get("fill")
    if row.get("on_budget") is None:
        return "—"
    text = f"{fill:.3f}" if isinstance(fill, (int, float)) else "shape"
    return text if row["on_budget"] else f"**off** ({text})"


def _ordered(first: list[str], seen) -> list[str]:
    return list(dict.fromkeys([*first, *seen]))


def _sort_key(row: dict):
    mean = row.get("ppl_geo_mean")
    return (row["status"] != "ok", not _finite(mean), mean if _finite(mean) else 0.0, row["label"])


def _on_budget(rows: list[dict]) -> list[dict]:
    """The rows that may be called best: ran, landed on budget, finite geo-mean."""
    return [r for r in rows if r["status"] == "ok" and r.get("on_budget") and _finite(r.get("ppl_geo_mean"))]


def _regime_title(regime: str) -> str:
    return "training-free" if regime == "free" else "after recovery"


def _group(row: dict) -> str | None:
    """The summary column of a row: its plugin, with the host's own methods (uniform-magnitude,
    random) counted among the baselines."""
    plugin = row.get("plugin")
    return BASELINES if plugin in BUILTIN_PLUGINS else plugin


def plugin_summary(rows: list[dict], budgets: list[str], regimes: list[str]) -> list[str]:
    """One line per (budget, regime): the best on-budget geo-mean each plugin reached, and its ratio to
    the best baseline, which is how the backends are judged (lower is better)."""
    groups = {_group(r) for r in rows} - {None}
    plugins = _ordered([BASELINES] if BASELINES in groups else [], sorted(groups))
    if len(plugins) < 2:
        return []
    lines = ["", "## The best of each plugin (geo-mean, method; × the best baseline)", "",
             "| budget | regime | " + " | ".join(plugins) + " |", "|---|---|" + "---|" * len(plugins)]
    for regime in regimes:
        for budget in budgets:
            members = [r for r in rows if r.get("regime") == regime and r["budget"] == budget]
            if not members:
                continue
            on = _on_budget(members)
            best = {p: min((r for r in on if _group(r) == p), key=lambda r: r["ppl_geo_mean"], default=None)
                    for p in plugins}
            reference = best.get(BASELINES)
            cells = []
            for plugin, row in best.items():
                if row is None:
                    cells.append("—")
                    continue
                ratio = (f", {row['ppl_geo_mean'] / reference['ppl_geo_mean']:.2f}×"
                         if reference is not None and plugin != BASELINES else "")
                cells.append(f"{_fmt_ppl(row['ppl_geo_mean'])} ({row['label']}){ratio}")
            lines.append(f"| {budget} | {_regime_title(regime)} | "
                         + " | ".join(cells) + " |")
    return lines


def markdown(data: dict) -> str:
    """A table per (budget, regime), sorted by the geometric mean of the held-out perplexities."""
    settings = data["settings"]
    sources = settings["eval_sources"]
    rows = data["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    lines = [f"# Leaderboard: `{settings['model']}`", "",
             f"Calibration `{settings['calibration']}` ({settings['calibration_samples']}×"
             f"{settings['calibration_seq_len']} tokens, seed {settings['seed']}); held-out perplexity on "
             f"{settings['eval_windows'] or 'all'} windows of {settings['eval_seq_len']} tokens per source; "
             "geo-mean: their geometric mean. Fill: measured / target in the budget's unit; a row is on budget "
             f"when 1 − {settings.get('fill_tolerance', FILL_TOLERANCE):g} ≤ fill ≤ 1 (**off** otherwise, kept "
             "in the table). Decode: greedy tokens/s of the reloaded export (batch 1, "
             f"{settings['decode']['tokens']} tokens, median of {settings['decode']['repeats']}) and its ratio to "
             "the dense model timed alongside it. ◀ best: lowest geo-mean among the on-budget rows (where two "
             "or more rows ran). "
             "Wall times and speeds are measured under load unless the machine was idle."]
    devices = sorted({str(r.get("device", "cpu")) for r in rows})
    if devices != ["cpu"]:
        lines += ["", f"Methods ran and models were evaluated on: {', '.join(devices)} (per row: `device` in "
                  "results.json); recovery runs wherever accelerate puts it."]
    if settings.get("recovery"):
        recovery = ", ".join(f"{k}={v}" for k, v in settings["recovery"].items() if v is not None)
        lines += ["", f"Recovery (regime `recovered`): {recovery}; teacher: the dense model."]
    if data.get("commands"):
        lines += ["", "Commands that wrote these rows (oldest first; each resumed the file):", "",
                  *[f"- `{c}`" for c in data["commands"]]]
    if dense is not None:
        ppl = dense.get("perplexity") or {}
        lines += ["", f"Dense: {dense.get('parameters', 0):,} parameters ({dense.get('non_embedding_parameters', 0):,} "
                  "non-embedding); " + ", ".join(f"{s} {_fmt_ppl(ppl.get(s))}" for s in sources)
                  + f"; geo-mean {_fmt_ppl(dense.get('ppl_geo_mean'))}; decode {_speed(dense)}."]
    # this run's budgets and regimes first, then those earlier runs into the same --out recorded
    budgets = _ordered(settings.get("budgets") or [], (r["budget"] for r in rows if r["method"] != "dense"))
    regimes = _ordered(settings.get("regimes") or [], (r["regime"] for r in rows if r.get("regime")))
    lines += plugin_summary(rows, budgets, regimes)
    header = ["#", "method", "params (ratio)", "non-emb ratio", "MACs ratio", "fill", *[f"ppl {s}" for s in sources],
              "geo-mean", "prune s", "peak RSS MiB", "decode tok/s (× dense)", ""]
    for regime in regimes:
        for budget in budgets:
            members = sorted((r for r in rows if r.get("regime") == regime and r["budget"] == budget), key=_sort_key)
            if not members:
                continue
            on = _on_budget(members)
            best = min(on, key=lambda r: r["ppl_geo_mean"])["key"] if on and len(members) >= 2 else None
            lines += ["", f"## {budget} — {_regime_title(regime)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for rank, r in enumerate(members, start=1):
                ok = r["status"] == "ok"
                ppl = r.get("perplexity") or {}
                params = (f"{r['parameters']:,} ({r['parameters_ratio']:.3f})"
                          if isinstance(r.get("parameters"), int) else "—")
                rss = r.get("peak_rss_mib")
                cells = [str(rank) if ok else "—", r["label"], params, _ratio(r.get("non_embedding_ratio")),
                         _ratio(r.get("macs_ratio")), _budget_cell(r),
                         *[_fmt_ppl(ppl.get(s)) if ppl.get(s) is not None or ok else "error" for s in sources],
                         _fmt_ppl(r.get("ppl_geo_mean")) if ok else "error",
                         f"{r['prune_seconds']:.1f}" if isinstance(r.get("prune_seconds"), (int, float)) else "—",
                         f"{rss:,.0f}" if isinstance(rss, (int, float)) else "—", _speed(r),
                         "◀ best" if r["key"] == best else ""]
                lines.append("| " + " | ".join(cells) + " |")
            failures = [r for r in members if r["status"] != "ok"]
            for r in failures:
                e = r["error"]
                lines.append(f"\n- {r['label']} failed in {e['stage']}: `{e['type']}: "
                             f"{' '.join(str(e['message']).split())[:300]}`")
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float]], higher_x_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower y always better), in x order."""
    ordered = sorted(points, key=lambda p: (-p[0], p[1]) if higher_x_better else (p[0], p[1]))
    front, best = [], math.inf
    for x, y in ordered:
        if y < best:
            front.append((x, y))
            best = y
    return sorted(front)


def plot(data: dict, out: Path) -> None:
    """Geo-mean perplexity against parameters kept and against decode speed-up, each with its Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["status"] == "ok" and _finite(r.get("ppl_geo_mean"))]
    labels = sorted({r["label"] for r in rows if r["method"] != "dense"})
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    markers = {"free": "o", "recovered": "^"}
    axes_of = (("parameters_ratio", "parameters kept (fraction of dense)", False, PLOTS[0]),
               ("decode_speedup", "decode speed of the export (× dense, measured)", True, PLOTS[1]))
    for field, xlabel, higher_better, name in axes_of:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        points = []
        for r in rows:
            if not isinstance(r.get(field), (int, float)):
                continue
            points.append((r[field], r["ppl_geo_mean"]))
            if r["method"] == "dense":
                ax.plot([r[field]], [r["ppl_geo_mean"]], "k*", markersize=14)
                continue
            ax.plot([r[field]], [r["ppl_geo_mean"]], markers.get(r.get("regime"), "o"), color=colours[r["label"]],
                    markerfacecolor=colours[r["label"]] if r.get("on_budget") else "none")
        front = pareto(points, higher_better)
        if front:
            ax.plot(*zip(*front), "k--", linewidth=1, alpha=0.6)
        handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=label) for label, c in colours.items()]
        handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=regime)
                    for regime, m in markers.items() if regime in data["settings"].get("regimes", ())]
        handles += [plt.Line2D([], [], color="k", marker="*", linestyle="", markersize=10, label="dense"),
                    plt.Line2D([], [], color="k", linestyle="--", label="Pareto front")]
        ax.legend(handles=handles, fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out perplexity, geometric mean (log)")
        ax.set_title(f"{data['settings']['model']}: hollow markers are off budget")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, build_parser(), run, "leaderboard", "leaderboard")


if __name__ == "__main__":
    import sys

    sys.exit(main())
