"""What the evolutionary search costs on this machine, and a killed search resumed.

1. Scaling, in one process on one model and budget: the OBS start is computed once; then searches
   with several (population, generations) settings, each recording wall time, candidates evaluated,
   candidates per second, the time per generation, how many children the budget window and the
   duplicate check dropped, and the best fitness reached. One setting is also run with sliced
   instead of masked candidate evaluation.
2. Kill and resume: ``amoeba searchllm run`` is started in a subprocess, killed with SIGKILL once its
   log shows a finished generation, and started again with the same command; its final plan is
   compared with that of an uninterrupted run of the same command.

    python -m benchmarks.searchllm_search_cost --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from amoeba_searchllm.init import prepare_start
from amoeba_searchllm.operators import Variation
from amoeba_searchllm.search import LOG, EvolutionSearch, SearchConfig

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import calibration_windows
from amoeba_plugin.eval.scorers import PerplexityScorer
from amoeba_plugin.models import load_model
from amoeba_plugin.plan import Plan
from amoeba_plugin.surgery import slice_model
from benchmarks.harness import open_results, run_benchmark

HERE = Path(__file__).resolve().parent

#: (population, generations): population doubles at fixed generations, generations double at fixed population
GRID = ((10, 2), (10, 4), (10, 8), (20, 4), (40, 4))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="amoeba-tiny-sotu")
    p.add_argument("--budget", default="params=0.5")
    p.add_argument("--fitness-windows", type=int, default=8)
    p.add_argument("--fitness-seq-len", type=int, default=128)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kill-generations", type=int, default=6, help="generations of the kill-and-resume run")
    p.add_argument("--skip-kill", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "searchllm_search_cost"))
    return p


def main(argv=None) -> int:
    return run_benchmark(build_parser(), run, argv)


def run(args) -> int:
    out = Path(args.out)
    results = open_results(args, hide=("generations_log",), ignore=("skip_kill",))
    model, tokenizer = load_model(args.model)
    anatomy = anatomy_of(model)
    windows = calibration_windows(tokenizer, "sotu:train", args.samples, args.seq_len, args.seed)
    statistics, fitness_text = windows[:-args.fitness_windows], windows[-args.fitness_windows:, :args.fitness_seq_len]
    t = time.perf_counter()
    prepared = prepare_start(model, anatomy, statistics, Budget.parse(args.budget))
    saliency_seconds = time.perf_counter() - t
    space, cost, saliency, start, ratio = (prepared.space, prepared.cost, prepared.saliency, prepared.candidate,
                                           prepared.ratio)
    scorer = PerplexityScorer(fitness_text)
    fitness = {"masked": lambda c: scorer(model, anatomy, c.to_plan(anatomy)),
               "sliced": lambda c: scorer.score_model(slice_model(model, anatomy, c.to_plan(anatomy)))}

    def search(population: int, generations: int, evaluation: str = "masked") -> dict:
        config = SearchConfig(population=population, mutation=population // 2, crossover=(3 * population) // 10,
                              top_k=max(2, population // 10), generations=generations, seed=args.seed)
        variation = Variation(space, depth_rule="influence", influence=saliency.influence)
        result = EvolutionSearch(space, cost, variation, fitness[evaluation], config).run(start)
        ran = sum(g.evaluated for g in result.history)
        return {"population": population, "generations": generations, "evaluation": evaluation,
                "seconds": round(result.seconds, 2), "evaluated": ran,
                "candidates_per_second": round(ran / result.seconds, 3),
                "seconds_per_generation": round(result.seconds / (generations + 1), 2),
                "dropped_out_of_budget": sum(g.out_of_budget for g in result.history),
                "dropped_duplicates": sum(g.duplicates for g in result.history),
                "start_fitness": round(result.initial_fitness, 4), "best_fitness": round(result.fitness, 4),
                "generations_log": [{"generation": g.generation, "evaluated": g.evaluated, "best": round(g.best, 4),
                                     "seconds": g.seconds} for g in result.history]}

    results.get("start", lambda: {"start_seconds": round(saliency_seconds, 2), "uniform_ratio": round(ratio, 4),
                                  "space": space.describe(), "start_cost_ratio": round(start.cost(cost) / cost.full, 4)})
    for population, generations in GRID:
        results.get(f"masked P={population} G={generations}", lambda p=population, g=generations: search(p, g))
    results.get("sliced P=20 G=4", lambda: search(20, 4, "sliced"))
    if not args.skip_kill:
        results.get("kill and resume", lambda: kill_and_resume(args, out))
    (out / "results.md").write_text(markdown(results.data, args))
    print(f"wrote {out / 'results.md'}")
    return 0


def kill_and_resume(args, out: Path) -> dict:
    """SIGKILL an ``amoeba searchllm run`` after its first finished generation, run it again, compare."""
    amoeba = str(Path(sys.executable).with_name("amoeba"))
    runs = out / "runs"

    def command(name: str) -> list[str]:
        return [amoeba, "--quiet", "searchllm", "run", args.model, "--budget", args.budget, "--preset", "quick",
                "--generations", str(args.kill_generations), "--fitness-windows", str(args.fitness_windows),
                "--option", f"fitness_seq_len={args.fitness_seq_len}", "--calibration-samples", str(args.samples),
                "--calibration-seq-len", str(args.seq_len), "--seed", str(args.seed), "--no-eval", "--restart",
                "--work", str(runs / f"{name}.search"), "--output", str(runs / name), "--overwrite"]

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or torch.get_num_threads()), "AMOEBA_PROGRESS": "0"}
    began = time.perf_counter()
    subprocess.run(command("uninterrupted"), check=True, env=env, capture_output=True)
    uninterrupted_seconds = time.perf_counter() - began
    victim = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = runs / "killed.search" / LOG
    killed_after = None
    while victim.poll() is None:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 2:  # generations 0 and 1 done: kill it in the middle of the rest
            time.sleep(1.0)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_after = len(lines) - 1
            break
        time.sleep(0.2)
    if killed_after is None:
        raise RuntimeError("the search finished before it could be killed: use more --kill-generations")
    assert not (runs / "killed").exists(), "a killed run must leave no export"
    resume = [c for c in command("killed") if c != "--restart"]
    done = subprocess.run(resume, check=True, env=env, capture_output=True, text=True)
    a = Plan.load(runs / "uninterrupted").to_dict()["layers"]
    b = Plan.load(runs / "killed").to_dict()["layers"]
    generations = [json.loads(line)["generation"] for line in log.read_text().splitlines()]
    return {"killed_after_generation": killed_after, "resumed_output": done.stdout.strip().splitlines()[-4:],
            "log_generations": generations, "same_plan": a == b,
            "uninterrupted_seconds": round(uninterrupted_seconds, 1)}


def markdown(data: dict, args) -> str:
    e = data["entries"]
    start = e["start"]
    lines = [f"Model `{args.model}`, budget `{args.budget}` (uniform start ratio {start['uniform_ratio']}); fitness: "
             f"perplexity on {args.fitness_windows}×{args.fitness_seq_len} tokens; {data.get('torch_threads')} torch "
             f"thread(s); the start (OBS saliency, block influence) took {start.get('start_seconds', start.get('saliency_seconds'))} s. Mutation children are half the "
             f"population, crossover 30%, parents 10% (at least 2).", "",
             "| population | generations | evaluation | candidates evaluated | wall s | candidates/s | s/generation | "
             "dropped (budget) | dropped (duplicate) | fitness start → best |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in e.items():
        if key.startswith(("masked", "sliced")):
            lines.append(f"| {r['population']} | {r['generations']} | {r['evaluation']} | {r['evaluated']} | "
                         f"{r['seconds']} | {r['candidates_per_second']} | {r['seconds_per_generation']} | "
                         f"{r['dropped_out_of_budget']} | {r['dropped_duplicates']} | "
                         f"{r['start_fitness']} → {r['best_fitness']} |")
    k = e.get("kill and resume")
    if k:
        lines += ["", f"Kill and resume (`amoeba searchllm run ... --preset quick --generations {args.kill_generations}`): "
                  f"SIGKILL after generation {k['killed_after_generation']}, rerun resumed; log generations "
                  f"{k['log_generations']}; same final plan as the uninterrupted run: **{k['same_plan']}**."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
