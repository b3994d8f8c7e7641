"""Recovery after pruning: held-out perplexity against recovery tokens, logit distillation vs LM loss.

The model is pruned once with ``--method`` to ``--budget`` through the host's
:func:`~amoeba_plugin.pipeline.run_method` (the sliced model, compensation folded in, is kept in
``RUN_DIR/pruned`` and its plan in ``OUT/plan.json``, so a rerun does not prune again), then the same sliced model is healed once per ``--losses`` arm with
:func:`amoeba_plugin.recovery.recover`: the same training text, token budget, batch order, LR schedule
and seed; only the loss differs (``distill``: KL to the dense model's logits; ``lm``: next-token loss).
Every ``--eval-every`` tokens the student's perplexity is measured on the first ``--eval-windows``
windows of every held-out source (the same tokens for every arm and for the dense and pruned rows).

Resumable: each arm is a recovery run directory under ``--run-dir`` (checkpoints at every
evaluation; not committed), and every measured point is written to ``results.json`` at once, so a
killed benchmark started again with the same settings goes on where it stopped. Writes
``results.json``, ``results.md`` and ``recovery_curve.png`` under ``--out``.

    OMP_NUM_THREADS=1 python -m benchmarks.recovery_curve --threads 1
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

import amoeba_plugin  # noqa: F401  (registers the amoeba architecture)
from amoeba_plugin.api import PruningConfig, preflight
from amoeba_plugin.data import eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.models import load_model
from amoeba_plugin.pipeline import run_method
from amoeba_plugin.recovery import RecoveryConfig, recover
from benchmarks.harness import (load_results, machine_info, parameter_counts, run_benchmark, split_list, utc_now,
                                versions, write_json_atomic)

RESULTS_FORMAT = "amoeba-recovery-curve"
DEFAULT_EVAL = "sotu:validation,brown:test,moby-dick:test"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="flap")
    p.add_argument("--budget", default="0.5")
    p.add_argument("--calibration", default="sotu:train")
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--calibration-seq-len", type=int, default=256)
    p.add_argument("--losses", default="distill,lm")
    p.add_argument("--tokens", type=int, default=24576)
    p.add_argument("--source", default="sotu:train", help="recovery training text")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=None, help="default: RecoveryConfig's")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=4096, help="tokens between evaluations")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-sources", default=DEFAULT_EVAL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/recovery_curve_smollm2")
    p.add_argument("--run-dir", default=None, help="checkpoints of the arms (default OUT/runs; not committed)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p


SETTING_KEYS = ("model", "method", "budget", "calibration", "calibration_samples", "calibration_seq_len", "losses",
                "tokens", "source", "seq_len", "batch_size", "lr", "lora_rank", "eval_every", "eval_windows",
                "eval_sources", "seed")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Results:
    """``results.json``: settings, the dense and pruned rows, and one row per (arm, tokens)."""

    def __init__(self, out: Path, settings: dict):
        self.path = out / "results.json"
        old = load_results(self.path, RESULTS_FORMAT, "benchmarks.recovery_curve")
        if old is None or old.get("settings") != settings:
            old = {"format": RESULTS_FORMAT, "settings": settings, "points": {}}
        old.update(machine=machine_info(), versions=versions())
        self.data = old

    def has(self, key: str) -> bool:
        return key in self.data["points"]

    def put(self, key: str, row: dict) -> None:
        self.data["points"][key] = {**row, "finished": utc_now()}
        write_json_atomic(self.path, self.data)
        log(f"{key}: " + ", ".join(f"{s} {v:.2f}" for s, v in row.get("perplexity", {}).items()))

    def set(self, name: str, value) -> None:
        self.data[name] = value
        write_json_atomic(self.path, self.data)


def perplexities(model, windows: dict) -> dict:
    return {spec: PerplexityEvaluator().evaluate(model, None, source=spec, windows=w)["perplexity"]
            for spec, w in windows.items()}


def pruned_model(args, model, tokenizer, out: Path, run_root: Path):
    """The sliced model, pruned through :func:`run_method` once and kept in ``RUN_DIR/pruned`` (the plan
    alone would not do: FLAP's compensation biases are a patch folded in by slicing)."""
    from transformers import AutoModelForCausalLM

    from amoeba_plugin.anatomy import anatomy_of

    saved = run_root / "pruned"
    if (saved / "config.json").is_file() and (out / "plan.json").is_file():
        log(f"pruned model from {saved}")
        return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval(), None
    config = PruningConfig(method=args.method, budget=args.budget, calibration=args.calibration,
                           calibration_samples=args.calibration_samples, calibration_seq_len=args.calibration_seq_len,
                           seed=args.seed, evaluation=None)
    method, budget, data, options = preflight(config)
    context = PruningContext(model=model, tokenizer=tokenizer, anatomy=anatomy_of(model), budget=budget,
                             options=options, seed=args.seed, calibration=data.calibration_provider(tokenizer))
    began = time.perf_counter()
    run = run_method(method, context, data, config=config)
    seconds = time.perf_counter() - began
    sliced = run.slice()
    sliced.save_pretrained(saved)
    run.plan.save(out / "plan.json")
    log(f"pruned with {args.method} to {args.budget} in {seconds:.0f}s (under load)")
    return sliced, seconds


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    results = Results(out, settings)
    run_root = Path(args.run_dir) if args.run_dir else out / "runs"
    model, tokenizer = load_model(args.model)
    sources = split_list(args.eval_sources)
    windows = {s: eval_windows(tokenizer, s, args.seq_len, args.eval_windows) for s in sources}
    if not results.has("dense"):
        results.put("dense", {"arm": "dense", "tokens": 0, "parameters": parameter_counts(model)[0],
                              "perplexity": perplexities(model, windows)})
    pruned, prune_s = pruned_model(args, model, tokenizer, out, run_root)
    if prune_s is not None:
        results.set("prune_seconds_under_load", round(prune_s, 1))
    if not results.has("pruned"):
        results.put("pruned", {"arm": "pruned", "tokens": 0, "parameters": parameter_counts(pruned)[0],
                               "perplexity": perplexities(pruned, windows)})
    first = sources[0]
    for loss in split_list(args.losses):
        cfg = RecoveryConfig(tokens=args.tokens, loss=loss, source=args.source, seq_len=args.seq_len,
                             batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank, eval_source=first,
                             eval_windows=args.eval_windows, eval_every=args.eval_every, seed=args.seed)
        if results.has(f"{loss}@{cfg.steps * cfg.tokens_per_step}"):
            log(f"{loss}: finished earlier")
            continue
        student = copy.deepcopy(pruned)

        def measured(record, loss=loss, student=student):
            if "heldout_loss" not in record or results.has(f"{loss}@{record['tokens']}"):
                return
            ppl = {first: math.exp(record["heldout_loss"])}  # the same windows recover() just scored
            ppl.update(perplexities(student, {s: w for s, w in windows.items() if s != first}))
            results.put(f"{loss}@{record['tokens']}", {"arm": loss, "tokens": record["tokens"], "step": record["step"],
                                                       "train_loss": record.get("train_loss"),
                                                       "tokens_per_s_under_load": record.get("tokens_per_s"),
                                                       "perplexity": ppl})

        log(f"{loss}: {cfg.steps} steps of {cfg.tokens_per_step} tokens, lr {cfg.peak_lr:g}")
        result = recover(student, model if cfg.needs_teacher else None, tokenizer, cfg, run_dir=run_root / loss,
                         progress=measured)
        results.set(f"wall_s_{loss}_under_load", round(result.wall_s, 1))
        del student, result
    write_markdown(results.data, out / "results.md")
    plot(results.data, out / "recovery_curve.png")
    log(f"wrote {out / 'results.md'} and {out / 'recovery_curve.png'}")
    return 0


def _rows(data: dict, arm: str) -> list[dict]:
    rows = [r for r in data["points"].values() if r["arm"] == arm]
    return sorted(rows, key=lambda r: r["tokens"])


def write_markdown(data: dict, path: Path) -> None:
    s = data["settings"]
    sources = split_list(s["eval_sources"])
    arms = split_list(s["losses"])
    weights = "full weights" if not s["lora_rank"] else f"LoRA rank {s['lora_rank']}"
    lines = [f"# Recovery curve: {s['model']} pruned with {s['method']} to {s['budget']} of its parameters", "",
             f"Recovery on `{s['source']}`: {s['tokens']:,} tokens per arm (batch {s['batch_size']} x {s['seq_len']} "
             f"tokens), peak LR {s['lr'] or 'default'}, warm-up then cosine decay, seed {s['seed']}, "
             f"{weights}; the arms differ only "
             f"in the loss. Perplexity on the first {s['eval_windows']} windows of {s['seq_len']} tokens of each "
             "held-out source. Produced by `python -m benchmarks.recovery_curve`.", "",
             "| arm | tokens | " + " | ".join(f"ppl {x}" for x in sources) + " |",
             "|---|---:|" + "---:|" * len(sources)]
    for arm in ("dense", "pruned", *arms):
        for r in _rows(data, arm):
            lines.append(f"| {arm} | {r['tokens']:,} | " + " | ".join(f"{r['perplexity'].get(x, float('nan')):.2f}"
                                                                     for x in sources) + " |")
    walls = {k: v for k, v in data.items() if k.startswith("wall_s_")}
    if walls:
        lines += ["", "Wall time (measured under load, 8 jobs sharing 2 cores): "
                  + ", ".join(f"{k[len('wall_s_'):-len('_under_load')]} {v:.0f}s" for k, v in walls.items()) + "."]
    path.write_text("\n".join(lines) + "\n")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data["settings"]
    sources = split_list(s["eval_sources"])
    arms = split_list(s["losses"])
    pruned = _rows(data, "pruned")
    dense = _rows(data, "dense")
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for arm in arms:
            rows = pruned + _rows(data, arm)
            ax.plot([r["tokens"] for r in rows], [r["perplexity"][source] for r in rows], marker="o", label=arm)
        if dense:
            ax.axhline(dense[0]["perplexity"][source], color="grey", linestyle="--", label="dense")
        ax.set_yscale("log")
        ax.set_title(source)
        ax.set_xlabel("recovery tokens")
        ax.set_ylabel("perplexity")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{s['model']}, {s['method']} to {s['budget']}: distillation vs LM loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
