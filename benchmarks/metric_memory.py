"""Peak memory of calibration statistics: layer-by-layer collection against keeping every activation.

In one process, on one model and one set of calibration windows, measures the RSS peak (above the
RSS with the model loaded) of:

* ``all-activations``: the naive baseline, one forward pass with hooks that keep every input of every
  scored linear (q, o, gate, down) of every layer, as a metric would without streaming;
* ``statistics``: :func:`collect_statistics` (per-channel sums and squares; Wanda-sp, FLAP, BI);
* ``statistics+gram``: the same plus ``X X^T`` per input site, kept for every layer;
* ``obs`` (streaming): the OBS metric, which turns each layer's Gram matrices into inverse-Hessian
  diagonals as soon as the layer is done and drops them;
* ``taylor``: gradients of the loss over the windows (the model's own size in gradients, plus one
  batch's autograd graph).

    python -m benchmarks.metric_memory --model smollm2-135m --samples 32 --seq-len 256
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.calibration import SITES, collect_statistics
from amoeba_plugin.data import calibration_windows
from amoeba_plugin.models import load_model
from amoeba_plugin.plugins import get
from benchmarks.harness import PeakRSS, machine_info

def all_activations(model, anatomy, windows, batch_size: int) -> int:
    """Keep every input of the q, o, gate and down linears of every layer (float32); return bytes kept."""
    kept = []
    handles = [model.get_submodule(layer.modules[site]).register_forward_pre_hook(
        lambda m, args: kept.append(args[0].detach().clone())) for layer in anatomy.layers for site in SITES]
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    size = sum(t.numel() * t.element_size() for t in kept)
    kept.clear()
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="amoeba-tiny-sotu")
    ap.add_argument("--calibration", default="sotu:train")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: results/metric_memory_<model>.json)")
    args = ap.parse_args(argv)
    model, tokenizer = load_model(args.model)
    model.eval()
    anatomy = anatomy_of(model)
    windows = calibration_windows(tokenizer, args.calibration, args.samples, args.seq_len, seed=0)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    mib = 1024 * 1024
    cases = {
        "all-activations": lambda: all_activations(model, anatomy, windows, args.batch_size),
        "statistics": lambda: collect_statistics(model, anatomy, windows, batch_size=args.batch_size),
        "statistics+gram": lambda: collect_statistics(model, anatomy, windows, gram=True, batch_size=args.batch_size),
        "obs (streaming)": lambda: get("metrics", "obs").score(model, anatomy, "mlp_channel", windows),
        "taylor": lambda: get("metrics", "taylor").score(model, anatomy, "mlp_channel", windows),
    }
    rows = []
    for name, fn in cases.items():
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            result = fn()
        seconds = time.perf_counter() - t0
        del result
        row = {"case": name, "peak_above_start_mib": round((rss.peak - rss.start) / mib, 1),
               "ratio_to_model": round((rss.peak - rss.start) / model_bytes, 3), "seconds": round(seconds, 1),
               "rss_start_mib": round(rss.start / mib, 1)}
        rows.append(row)
        print(f"{name:18s} +{row['peak_above_start_mib']:8.1f} MiB  ({row['ratio_to_model']:.2f}x model)  "
              f"{seconds:6.1f}s", file=sys.stderr)
    result = {"model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
              "model_mib": round(model_bytes / mib, 1), "dtype": str(next(model.parameters()).dtype),
              "windows": list(windows.shape), "tokens": int(windows.numel()), "batch_size": args.batch_size,
              "layers": anatomy.num_layers, "rows": rows, "machine": machine_info(),
              "command": "python -m benchmarks.metric_memory " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = args.out or Path(__file__).parent / "results" / f"metric_memory_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"model {result['model_mib']} MiB ({result['parameters']:,} parameters); {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
