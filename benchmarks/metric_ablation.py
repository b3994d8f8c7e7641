"""Which metric picks the better heads and channels? Each metric alone, with the allocation held fixed.

The baselines differ in two things at once: the metric that ranks units inside a layer, and how
the budget is spread over layers. This script holds the allocation fixed (the same share of MLP
channels, or of query heads per KV group, removed in every layer) and swaps only the metric, in
one process on the same calibration and evaluation tokens; random runs with several seeds so its
spread is visible. It also measures what removing each query head alone costs (the loss increase on
calibration text, per layer), which shows where a model is sensitive.

    python -m benchmarks.metric_ablation --model amoeba-tiny-sotu
    python -m benchmarks.metric_ablation --model smollm2-135m --eval-windows 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.data import calibration_windows, eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import uniform_plan
from amoeba_plugin.surgery import apply_soft

METRICS = ("magnitude", "wanda-sp", "fluctuation", "taylor", "obs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="amoeba-tiny-sotu")
    ap.add_argument("--calibration", default="sotu:train")
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-sources", default="sotu:validation,brown:test")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--mlp-keep", type=float, default=0.7, help="share of MLP channels kept in every layer")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--head-costs", type=int, default=8, help="calibration windows for per-head costs (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    model, tok = load_model(args.model)
    model.eval()
    anatomy = anatomy_of(model)
    cal = calibration_windows(tok, args.calibration, args.calibration_samples, args.seq_len, seed=0)
    sources = [s.strip() for s in args.eval_sources.split(",") if s.strip()]
    evals = {s: eval_windows(tok, s, args.seq_len, args.eval_windows) for s in sources}
    first = anatomy.layers[0]
    qpg, width = first.queries_per_group, first.intermediate_size
    shapes = {"mlp": (qpg, round(width * args.mlp_keep))}
    if qpg > 1:
        shapes["heads"] = (qpg - 1, width)

    def evaluate(plan) -> dict:
        with apply_soft(model, anatomy, plan):
            return {s: round(PerplexityEvaluator().evaluate(model, tok, windows=w, source=s)["perplexity"], 2)
                    for s, w in evals.items()}

    rows = [{"metric": "dense", "what": "-", **evaluate(uniform_plan(anatomy, qpg, width))}]
    runs = [(m, {}) for m in METRICS] + [("random", {"seed": s}) for s in range(args.random_seeds)]
    for name, options in runs:
        metric = get("metrics", name)
        scores = metric.score_units(model, anatomy, ("query_head", "mlp_channel"),
                                    cal if metric.needs_calibration else None, **options)
        for what, (heads, mlp) in shapes.items():
            plan = uniform_plan(anatomy, heads, mlp, scores["query_head"], scores["mlp_channel"])
            label = name if not options else f"{name} (seed {options['seed']})"
            row = {"metric": label, "what": f"{what}: {heads}/{qpg} heads per group, {mlp}/{width} MLP", **evaluate(plan)}
            rows.append(row)
            print(row, file=sys.stderr)
    result = {"model": args.model, "rows": rows, "calibration": list(cal.shape),
              "eval_windows": {s: list(w.shape) for s, w in evals.items()}}
    if args.head_costs:
        costs = get("metrics", "removal-loss").score(model, anatomy, "query_head", cal[: args.head_costs])
        result["head_removal_cost"] = [[round(float(c), 5) for c in layer] for layer in costs]
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = "python -m benchmarks.metric_ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    out = args.out or Path(__file__).parent / "results" / f"metric_ablation_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    header = ["metric", "what", *sources]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    if "head_removal_cost" in result:
        print("\nloss increase from removing one query head (max / median per layer):")
        for i, costs in enumerate(result["head_removal_cost"]):
            print(f"  layer {i:2d}: max {max(costs):.4f}  median {sorted(costs)[len(costs) // 2]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
