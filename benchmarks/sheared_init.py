"""Sheared in process at one budget with given options: held-out perplexity of the sliced model.

Measures what the mask start (``mask_init``) and the mask LR do at the method's small default step
budget. Usage, from the repository root: ``python -m benchmarks.sheared_init [--model amoeba-tiny-sotu]
[--budget 0.5] [--options '{"mask_init": "paper"}']``; prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.calibration.windows import calibration_windows
from amoeba_plugin.data import eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get
from amoeba_plugin.surgery import slice_model

SOURCES = ("sotu:validation", "brown:test", "moby-dick:test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="amoeba-tiny-sotu")
    ap.add_argument("--budget", default="0.5")
    ap.add_argument("--options", default="{}", help="the sheared method's options as JSON")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    anatomy = anatomy_of(model)
    windows = calibration_windows(tokenizer, "sotu:train", 32, 256, 0)
    context = PruningContext(model=model, tokenizer=tokenizer, anatomy=anatomy, budget=Budget.parse(args.budget),
                             options=json.loads(args.options), seed=0, calibration=lambda: windows.clone())
    start = time.perf_counter()
    result = get("methods", "sheared")().prune(context)
    seconds = time.perf_counter() - start
    sliced = slice_model(result.model, anatomy_of(result.model), result.plan, result.patch)
    ppl = {s: round(PerplexityEvaluator().evaluate(sliced, tokenizer, windows=eval_windows(tokenizer, s, 256,
                                                                                          args.eval_windows),
                                                   source=s, batch_size=8)["perplexity"], 2) for s in SOURCES}
    ratio = sum(p.numel() for p in sliced.parameters()) / sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": args.model, "budget": args.budget, "options": json.loads(args.options),
                      "ratio": round(ratio, 4), "ppl": ppl,
                      "geo_mean": round(math.exp(sum(math.log(v) for v in ppl.values()) / len(ppl)), 2),
                      "prune_seconds": round(seconds, 1), "target": result.info["target"]}))


if __name__ == "__main__":
    main()
