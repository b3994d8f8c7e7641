"""AmoebaLLM's depth DP against simple layer-dropping rules, before any fine-tuning.

One process, one model (default the embedded ``amoeba-tiny-sotu``, 8 layers). The DP of AmoebaLLM
(``amoeba_amoeballm.depth``) runs twice: scored by the LM loss on calibration windows from
``sotu:train``, and by accuracy on the calibration cloze task ``amoeba_sotu_cloze_calib`` (questions from
``sotu:train`` only, drawn seeded; the paper scores 5-shot MMLU). At every depth from L-1 down to
``--min-layers`` it compares, on the same held-out tokens (sotu:validation and brown):

* ``dp-loss`` / ``dp-cloze``: the DP's layer set for that depth;
* ``drop-last``: drop the layers just below the final ``--keep-last`` (a contiguous top block);
* ``block-influence``: ShortGPT, drop the layers with the lowest block influence ``1 - cos(h_in, h_out)``
  on the calibration windows (over all layers, as ShortGPT does).

Every subnet is physically sliced (``slice_model``) before it is evaluated: an independent path from
the soft layer skipping the DP scores with. Reported per subnet: calibration loss (the loss DP's
objective), held-out perplexity per source, held-out cloze accuracy (``amoeba_sotu_cloze``, a seeded
draw). Reported per DP: evaluations (and the closed form), total and per-evaluation seconds.

Writes ``amoeballm_depth_tiny.json`` and ``.md`` under ``--out``.

Usage: ``python -m benchmarks.amoeballm_depth --threads 1``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from amoeba_amoeballm.depth import DepthTable, dp_layer_selection, expected_evaluations
from amoeba_amoeballm.scorers import LMEvalScorer, LossScorer, layer_plan

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.data import calibration_windows, eval_windows
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get
from amoeba_plugin.surgery import slice_model
from benchmarks.harness import machine_info, restored_settings, versions, write_json_atomic

FORMAT = "amoeba-amoeballm-depth"
METHODS = ("dp-loss", "dp-cloze", "drop-last", "block-influence")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="amoeba-tiny-sotu")
    ap.add_argument("--min-layers", type=int, default=4)
    ap.add_argument("--keep-last", type=int, default=1)
    ap.add_argument("--calibration", default="sotu:train")
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cloze-task", default="amoeba_sotu_cloze_calib",
                    help="lm-eval task scoring the second DP ('none': skip that DP)")
    ap.add_argument("--cloze-questions", type=int, default=100, help="questions per cloze DP evaluation")
    ap.add_argument("--eval-sources", default="sotu:validation,brown:test")
    ap.add_argument("--eval-windows", type=int, default=32, help="windows per held-out source (0: all)")
    ap.add_argument("--heldout-cloze", type=int, default=100,
                    help="questions of the held-out amoeba_sotu_cloze per subnet (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", default="amoeballm_depth_tiny", help="file stem of the results")
    ap.add_argument("--quiet", action="store_true")
    return ap


def drop_last(num_layers: int, keep_last: int, depth: int) -> list[int]:
    """Keep the first ``depth - keep_last`` layers and the final ``keep_last``."""
    return list(range(depth - keep_last)) + list(range(num_layers - keep_last, num_layers))


def lowest_first(scores: list[float], depth: int) -> list[int]:
    """Keep the ``depth`` layers of highest score (ShortGPT drops the lowest block influence first)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    dropped = set(order[: len(scores) - depth])
    return [i for i in range(len(scores)) if i not in dropped]


def run(args, log) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = load_model(args.model)
    model.eval()
    anatomy = anatomy_of(model)
    L, K = anatomy.num_layers, args.keep_last
    cal = calibration_windows(tok, args.calibration, args.calibration_samples, args.seq_len, seed=args.seed)
    sources = [s.strip() for s in args.eval_sources.split(",") if s.strip()]
    evals = {s: eval_windows(tok, s, args.seq_len, args.eval_windows or None) for s in sources}
    log(f"{args.model}: {L} layers; calibration {tuple(cal.shape)}; "
        + ", ".join(f"{s} {tuple(w.shape)}" for s, w in evals.items()))

    # ---- the DPs
    loss_scorer = LossScorer(cal)
    dps: dict[str, dict] = {}

    def run_dp(label: str, scorer) -> DepthTable:
        log(f"DP scored by {label} ...")
        t0 = time.perf_counter()
        table = dp_layer_selection(L, lambda kept: scorer(model, anatomy, kept), min_layers=args.min_layers,
                                   keep_last=K, higher_is_better=scorer.higher_is_better,
                                   show_progress=not args.quiet)
        total = time.perf_counter() - t0
        table.scores[0] = scorer(model, anatomy, list(range(L)))  # the full model, for reference
        table.scorer = scorer.describe()
        dps[label] = {"table": table.to_dict(), "seconds": round(total, 2),
                      "seconds_per_evaluation": round(statistics.mean(table.eval_seconds), 4),
                      "median_seconds_per_evaluation": round(statistics.median(table.eval_seconds), 4),
                      "expected_evaluations": expected_evaluations(L - K, L - args.min_layers)}
        log(f"  {table.evaluations} evaluations in {total:.1f}s ({dps[label]['seconds_per_evaluation']:.3f}s each)")
        return table

    tables = {"dp-loss": run_dp("dp-loss", loss_scorer)}
    if args.cloze_task.lower() != "none":
        cloze = LMEvalScorer(tok, args.cloze_task, num_questions=args.cloze_questions, seed=args.seed,
                             max_length=args.seq_len)
        cloze.samples()  # build the task and draw the questions before timing the DP
        tables["dp-cloze"] = run_dp("dp-cloze", cloze)

    # ---- ShortGPT's ranking on the same calibration windows
    t0 = time.perf_counter()
    bi = [float(v) for v in get("metrics", "block-influence").score(model, anatomy, "layer", cal)]
    bi_seconds = time.perf_counter() - t0

    # ---- every method at every depth
    choices: list[dict] = [{"depth": L, "method": "dense", "kept": list(range(L))}]
    for depth in range(L - 1, args.min_layers - 1, -1):
        for method in METHODS:
            if method in tables:
                kept = tables[method].kept_layers(depth)
            elif method == "drop-last":
                kept = drop_last(L, K, depth)
            elif method == "block-influence":
                kept = lowest_first(bi, depth)
            else:
                continue
            choices.append({"depth": depth, "method": method, "kept": kept})

    heldout = None
    if args.heldout_cloze:
        heldout = LMEvalScorer(tok, "amoeba_sotu_cloze", num_questions=args.heldout_cloze, seed=args.seed,
                               max_length=args.seq_len)
    measured: dict[tuple, dict] = {}
    for i, row in enumerate(choices, 1):
        key = tuple(row["kept"])
        if key not in measured:
            small = slice_model(model, anatomy, layer_plan(anatomy, row["kept"]))
            m = {"calibration_loss": loss_scorer(model, anatomy, row["kept"])}
            for s, w in evals.items():
                m[s] = PerplexityEvaluator().evaluate(small, tok, windows=w, source=s)["perplexity"]
            if heldout is not None:
                m["heldout_cloze_acc"] = heldout(model, anatomy, row["kept"])
            measured[key] = m
            del small
        row.update(measured[key], removed=[j for j in range(L) if j not in row["kept"]])
        log(f"[{i}/{len(choices)}] {row['depth']} layers {row['method']}: removed {row['removed']} "
            + " ".join(f"{s}={row[s]:.2f}" for s in sources))

    return {"format": FORMAT, "version": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "argv"},
            "model": {"name": args.model, "num_layers": L, "parameters": sum(p.numel() for p in model.parameters())},
            "eval_windows": {s: list(w.shape) for s, w in evals.items()}, "calibration_windows": list(cal.shape),
            "heldout_cloze": heldout.describe() if heldout is not None else None,
            "dp": dps, "block_influence": {"scores": bi, "seconds": round(bi_seconds, 2)},
            "rows": choices, "seconds_total": round(time.perf_counter() - started, 1),
            "machine": machine_info(), "versions": versions()}


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def markdown(data: dict) -> str:
    s = data["settings"]
    sources = list(data["eval_windows"])
    L = data["model"]["num_layers"]
    lines = [f"# AmoebaLLM depth DP vs layer-dropping rules ({data['model']['name']}, before fine-tuning)", "",
             f"Model `{data['model']['name']}` ({L} layers, {data['model']['parameters']:,} params). Calibration: "
             f"{data['calibration_windows'][0]}×{data['calibration_windows'][1]} tokens of `{s['calibration']}` "
             f"(seed {s['seed']}). Held-out perplexity on "
             + ", ".join(f"`{k}` ({v[0]} windows of {v[1]})" for k, v in data["eval_windows"].items())
             + (f"; held-out cloze: {data['heldout_cloze']['num_questions']} seeded questions of `amoeba_sotu_cloze`"
                " (sotu:validation, chance 0.25)" if data.get("heldout_cloze") else "")
             + f". DP: min {s['min_layers']} layers, last {s['keep_last']} always kept. Subnets sliced "
             "physically before evaluation. Threads: " + str(data["machine"].get("torch_threads")) + ".", "",
             "**Bold**: best perplexity on that source at that depth."
             + (f" A cloze accuracy near 0.35 on {data['heldout_cloze']['num_questions']} questions has a standard "
                f"error of about {(0.35 * 0.65 / data['heldout_cloze']['num_questions']) ** 0.5:.3f}."
                if data.get("heldout_cloze") else ""), "",
             "| layers | method | removed layers | calib loss | "
             + " | ".join(f"ppl {src}" for src in sources)
             + (" | held-out cloze acc |" if data.get("heldout_cloze") else " |"),
             "|---|---|---|---|" + "---|" * len(sources) + ("---|" if data.get("heldout_cloze") else "")]
    rows = data["rows"]
    for depth in sorted({r["depth"] for r in rows}, reverse=True):
        group = [r for r in rows if r["depth"] == depth]
        best = {src: min(r[src] for r in group) for src in sources}
        for r in group:
            cells = [str(depth), r["method"], ", ".join(map(str, r["removed"])) or "—",
                     _fmt(r["calibration_loss"], 4)]
            for src in sources:
                text = _fmt(r[src])
                cells.append(f"**{text}**" if len(group) > 1 and r[src] == best[src] else text)
            if data.get("heldout_cloze"):
                cells.append(_fmt(r.get("heldout_cloze_acc"), 3))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## The DPs", "",
              "| scorer | evaluations (closed form) | total s | s / evaluation (mean, median) |", "|---|---|---|---|"]
    for label, dp in data["dp"].items():
        t = dp["table"]
        desc = t["scorer"]
        what = (f"loss on {desc['windows']}×{desc['seq_len']} calibration tokens" if desc["name"] == "loss" else
                f"{desc['metric']} on {desc['num_questions']} questions of `{desc['task']}` (seed {desc['seed']})")
        lines.append(f"| {label}: {what} | {t['evaluations']} ({dp['expected_evaluations']}) | {dp['seconds']:.1f} | "
                     f"{dp['seconds_per_evaluation']:.3f}, {dp['median_seconds_per_evaluation']:.3f} |")
    lines += ["", "Seconds per evaluation include lm-eval's own overhead for the cloze scorer (building the task "
              "and its requests on every call)."]
    lines += ["", "Per number of removed layers m: removed layers and the DP's score D[N][m] (m = 0: the full model).",
              "", "| m | " + " | ".join(f"{label} removed | {label} score" for label in data["dp"]) + " |",
              "|---|" + "---|---|" * len(data["dp"])]
    tables = {label: DepthTable.from_dict(dp["table"]) for label, dp in data["dp"].items()}
    for m in range(L - s["min_layers"] + 1):
        cells = [str(m)]
        for t in tables.values():
            cells += [", ".join(map(str, t.removed_layers(L - m))) or "—", _fmt(t.scores.get(m), 4)]
        lines.append("| " + " | ".join(cells) + " |")
    bi = data["block_influence"]["scores"]
    lines += ["", "Block influence per layer (ShortGPT drops the lowest first): "
              + ", ".join(f"{i}: {v:.4f}" for i, v in enumerate(bi)) + ".", "",
              f"Total wall time {data['seconds_total']:.0f}s on {data['machine'].get('cpu', data['machine']['machine'])} "
              f"({data['machine'].get('torch_threads')} torch thread(s)).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[amoeballm-depth] {message}", file=sys.stderr, flush=True)

    try:
        with restored_settings(args.quiet):
            data = run(args, log)
    except AmoebaError as exc:
        print(f"amoeballm_depth: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{args.name}.json", data)
    (args.out / f"{args.name}.md").write_text(markdown(data))
    log(f"wrote {args.out / args.name}.json and .md ({data['seconds_total']:.0f}s)")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
