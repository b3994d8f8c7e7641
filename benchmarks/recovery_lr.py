"""The short learning-rate check behind recovery's CPU defaults (docs/recovery.md).

``--model`` is pruned once with ``--method`` to ``--budget`` (the host's Python API, calibration
``sotu:train``), then the same sliced model is healed with :func:`amoeba_plugin.recovery.recover` once
per (LoRA rank, loss, learning rate): ``--tokens`` tokens of ``sotu:train`` in batches of 4 x 256,
warm-up 5% then cosine, seed 0; held-out perplexity on 16 windows of 256 tokens of ``sotu:validation``
before and after. Rows are appended to ``--out`` (JSON lines) as they finish.

    OMP_NUM_THREADS=1 python -m benchmarks.recovery_lr --out benchmarks/results/recovery_lr_tiny.jsonl
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from amoeba_plugin import AmoebaPruner, PruningConfig
from amoeba_plugin.models import load_model
from amoeba_plugin.recovery import RecoveryConfig, recover
from benchmarks.harness import run_benchmark, split_list


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery_lr", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="amoeba-tiny-sotu")
    p.add_argument("--method", default="flap")
    p.add_argument("--budget", default="0.5")
    p.add_argument("--tokens", type=int, default=32 * 4 * 256)
    p.add_argument("--grid", default="0:distill:3e-5,1e-4,3e-4,1e-3;0:lm:3e-5,1e-4,3e-4,1e-3;8:distill:1e-3,3e-3",
                   help="LORA_RANK:LOSS:LR,LR,... groups separated by ';'")
    p.add_argument("--out", default="benchmarks/results/recovery_lr_tiny.jsonl")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def run(args) -> int:
    model, tokenizer = load_model(args.model)
    pruned = AmoebaPruner.from_pretrained(model, tokenizer=tokenizer).prune(
        PruningConfig(method=args.method, budget=args.budget)).model
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for group in args.grid.split(";"):
        rank, loss, lrs = group.split(":")
        for lr in split_list(lrs):
            cfg = RecoveryConfig(tokens=args.tokens, seq_len=256, batch_size=4, lr=float(lr), lora_rank=int(rank),
                                 loss=loss, eval_windows=16, seed=0)
            result = recover(copy.deepcopy(pruned), model, tokenizer, cfg, progress=False)
            held = result.heldout
            row = {"model": args.model, "method": args.method, "budget": args.budget, "tokens": result.tokens,
                   "lora_rank": int(rank), "loss": loss, "lr": float(lr), "ppl_before": held[0]["heldout_ppl"],
                   "ppl_after": held[-1]["heldout_ppl"], "wall_s_under_load": round(result.wall_s, 1)}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
