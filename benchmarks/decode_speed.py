"""Decode speed of pruned exports against the dense model, measured side by side in one process.

For each budget the embedded model (or ``--model``) is pruned with ``--method`` (one or several), exported to a
temporary directory, and reloaded with stock ``AutoModelForCausalLM.from_pretrained``. Then greedy
decoding (batch 1, KV cache, ``--new-tokens`` tokens after a fixed prompt) is timed for the dense
model and every export, interleaved over ``--repeats`` rounds; the median is reported.

Usage: ``python -m benchmarks.decode_speed [--model amoeba-tiny-sotu] [--budgets 0.5] [--repeats 5]``
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import amoeba_plugin  # noqa: F401  (registers the amoeba architecture for heterogeneous exports)
from amoeba_plugin.api import AmoebaPruner, PruningConfig
from benchmarks.harness import decode_speeds, parse_method_options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="amoeba-tiny-sotu")
    ap.add_argument("--method", default="uniform-magnitude", help="a method, or several comma-separated")
    ap.add_argument("--method-options", action="append", default=[], metavar="SPEC",
                    help="METHOD:key=value[,key=value] (repeatable), as in compare_methods.py")
    ap.add_argument("--samples", type=int, default=32, help="calibration windows of 256 tokens")
    ap.add_argument("--budgets", default="0.5", help="comma-separated parameter fractions")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode_speed.json")
    args = ap.parse_args()
    options = parse_method_options(args.method_options)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pruner = AmoebaPruner.from_pretrained(args.model)
    dense = pruner.model.eval()
    prompt = pruner.get_calibration_dataset("sotu:train", num_samples=1,
                                            seq_len=args.prompt_tokens, seed=0)
    models = {"dense": dense}
    params = {"dense": sum(p.numel() for p in dense.parameters())}
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.budgets.split(","):
            for method in args.method.split(","):
                config = PruningConfig(method=method, budget=b, evaluation=None, calibration_samples=args.samples,
                                       method_options=options.get(method, {}))
                out = pruner.prune(config, save_directory=Path(tmp) / f"{method}-b{b}")
                name = f"{method}@{b}"
                models[name] = AutoModelForCausalLM.from_pretrained(out.export_path).eval()
                params[name] = sum(p.numel() for p in models[name].parameters())
        speeds = decode_speeds(models, prompt, args.new_tokens, args.repeats)
    dense_rate = speeds["dense"]["tokens_per_s"]
    rows = []
    print(f"| model | parameters | decode tokens/s (median of {args.repeats}) | speed-up vs dense |")
    print("|---|---|---|---|")
    for name in models:
        med = speeds[name]["tokens_per_s"]
        rows.append({"model": name, "parameters": params[name], **speeds[name], "speedup": round(med / dense_rate, 3),
                     "param_ratio": round(params[name] / params["dense"], 4)})
        print(f"| {name} | {params[name]:,} ({rows[-1]['param_ratio']:.0%}) | {med:.1f} | {med / dense_rate:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "threads": args.threads, "new_tokens": args.new_tokens,
                                    "prompt_tokens": args.prompt_tokens, "machine": platform.machine(),
                                    "torch": torch.__version__, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
