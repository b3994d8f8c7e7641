"""AmoebaLLM one-for-all fine-tuning against its baselines, side by side in one process.

On the embedded model (or ``--model``):

1. stage 1 (DP depth table + FLAP width masks) on calibration windows from sotu:train;
2. one-for-all fine-tuning of SMoL on sotu:train for ``--steps`` steps (and, as ablations, the same
   with one shared plain LoRA and with balancing off);
3. for non-embedding budgets of about 80, 65 and 50 %: the best shape of the fine-tuned bundle, and
   held-out perplexity (sotu:validation, brown) of
   (a) that shape without fine-tuning, (b) that shape fine-tuned alone with plain LoRA for the same
   number of steps (the paper's per-subnet baseline), (c) FLAP and ShortGPT at the same budget, raw
   and fine-tuned with the same LoRA recipe; the ablations at the same shape;
4. extraction time of every shape, and decode speed of the extracted models against the dense
   model (ms per token, batch 1, KV cache).

Results go to ``--out`` (JSON + Markdown; the bundles under ``bundles/`` are not committed); finished
entries and trained bundles are kept, so an interrupted run resumes.

    python -m benchmarks.amoeballm_oneforall --steps 300
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from amoeba_amoeballm.bundle import Bundle, write_bundle
from amoeba_amoeballm.extract import choose_shape, decode_ms_per_token, extract
from amoeba_amoeballm.select import SelectionConfig, run_selection
from amoeba_amoeballm.smol import SMoLConfig
from amoeba_amoeballm.train import TrainConfig, lora_finetune, train_bundle

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.api import AmoebaPruner, PruningConfig, get_calibration_dataset
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.models import load_model
from benchmarks.harness import EntryCache, machine_info

HERE = Path(__file__).resolve().parent

EVAL_SOURCES = ("sotu:validation", "brown")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="amoeba-tiny-sotu")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every fine-tuning run")
    p.add_argument("--budgets", default="0.8,0.65,0.5", help="non-embedding parameter fractions")
    p.add_argument("--min-layers", type=int, default=4)
    p.add_argument("--widths", default="1,0.875,0.75,0.625,0.5")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where the per-subnet and baseline LoRA runs train (cpu, cuda); "
                   "the one-for-all runs train where accelerate puts them")
    p.add_argument("--no-ablations", action="store_true",
                   help="only the one-for-all SMoL run against its baselines (no shared-LoRA, no-balancing, "
                        "official-draw or dense-shape-only runs)")
    p.add_argument("--out", default=str(HERE / "results" / "amoeballm_oneforall_tiny"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    widths = tuple(float(w) for w in args.widths.split(","))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "device", "no_ablations")}
    results = EntryCache(out / "results.json", {"settings": settings, "machine": machine_info(),
                                              "torch_threads": torch.get_num_threads()}, hide=("shape_rows",))

    model, tokenizer = load_model(args.model)
    anatomy = anatomy_of(model)
    evals = {s: eval_windows(tokenizer, s, args.seq_len, args.eval_windows) for s in EVAL_SOURCES}
    ppl = PerplexityEvaluator()

    def perplexities(m) -> dict:
        return {s: round(ppl.evaluate(m, tokenizer, windows=w, source=s)["perplexity"], 3) for s, w in evals.items()}

    def measured(m, extra=None) -> dict:
        n = sum(p.numel() for p in m.parameters())
        return {"ppl": perplexities(m), "parameters": n, **(extra or {})}

    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                        save_every=max(1, args.steps // 4), log_every=max(1, args.steps // 20))
    results.get("dense", lambda: {"ppl": perplexities(model), "parameters": sum(p.numel() for p in model.parameters())})

    # ------------------------------------------------------------------ stage 1 and the bundles
    selected = out / "bundles" / "selected"
    if not (selected / "amoeba_bundle.json").exists():
        windows = get_calibration_dataset(tokenizer, "sotu:train", args.calibration_samples, args.seq_len, 0)
        table, report = run_selection(model, tokenizer, anatomy, windows,
                                      SelectionConfig(min_layers=args.min_layers, widths=widths))
        write_bundle(selected, args.model, anatomy, table, report)
    results.get("selection", lambda: {"report": Bundle.load(selected).manifest["selection"],
                                      "depth_masks": Bundle.load(selected).table.depth.masks})
    smol = SMoLConfig(num_experts=args.experts, rank=args.rank, top_k=2)
    runs = {"smol": smol, "plain_lora": SMoLConfig(num_experts=1, rank=args.rank, top_k=1),
            "smol_no_balancing": smol, "smol_official_draw": smol}
    if args.no_ablations:
        runs = {"smol": smol}
    bundles = {}
    for name, smol in runs.items():
        path = out / "bundles" / name
        if not path.exists():
            import shutil

            shutil.copytree(selected, path)
        cfg = copy.deepcopy(train)
        cfg.balancing = name != "smol_no_balancing"
        cfg.full_depth_random = name != "smol_official_draw"  # official: random depths < L
        if not Bundle.load(path).trained:
            print(f"one-for-all fine-tuning: {name} ({args.steps} steps)", flush=True)
            train_bundle(path, cfg, smol)
        bundles[name] = Bundle.load(path)
        results.get(f"train/{name}", lambda b=bundles[name]: {"training": b.manifest["training"]})

    # ------------------------------------------------------------------ sanity: the trainer on one shape
    # SMoL trained on the dense shape alone (no sandwich) against plain LoRA on the dense model: tells
    # the trainer's own effect apart from the cost of sharing one adapter across shapes
    dense_only = out / "bundles" / "dense_only"
    if not args.no_ablations:
        if not (dense_only / "amoeba_bundle.json").exists():
            windows = get_calibration_dataset(tokenizer, "sotu:train", 2, 32, 0)
            table, report = run_selection(model, tokenizer, anatomy, windows,
                                          SelectionConfig(min_layers=anatomy.num_layers, widths=(1.0,)),
                                          show_progress=False)
            write_bundle(dense_only, args.model, anatomy, table, report)
        if not Bundle.load(dense_only).trained:
            print(f"SMoL on the dense shape only ({args.steps} steps)", flush=True)
            train_bundle(dense_only, train, smol)
        full = f"{anatomy.num_layers}x1"
        results.get(f"{full}/smol_dense_shape_only", lambda: measured(extract(dense_only, shape=full).model))
        results.get(f"{full}/lora_dense", lambda: measured(lora_finetune(copy.deepcopy(model).to(args.device),
                                                                           tokenizer, train, rank=args.rank)))

    # ------------------------------------------------------------------ per budget
    for budget_value in budgets:
        budget = Budget("nonembed", budget_value)
        choice = choose_shape(bundles["smol"].table, anatomy, budget, bundles["smol"].shape_scores)
        shape = str(choice.shape)
        b = f"nonembed={budget_value:g}"

        results.get(f"{b}/shape", lambda: {"shape": shape, "reason": choice.reason,
                                            "summary": bundles["smol"].table.plan(choice.shape, anatomy).summary(anatomy)})
        # entries are keyed by what they depend on (the shape, or the baselines' budget), so a rerun
        # that picks another shape never reuses a row made for the old one
        results.get(f"{shape}/no_finetune", lambda: measured(extract(selected, shape=shape).model))
        for name, bundle in bundles.items():
            results.get(f"{shape}/oneforall_{name}", lambda bundle=bundle: measured(
                extract(bundle.path, shape=shape).model))
        results.get(f"{shape}/per_subnet_lora", lambda: measured(
            lora_finetune(extract(selected, shape=shape).model.to(args.device), tokenizer, train, rank=args.rank)))
        # the baselines get the ratio the chosen shape actually reached (at most the budget), so no
        # row has more parameters than the AmoebaLLM subnet it is compared with
        reached = bundles["smol"].table.plan(choice.shape, anatomy).summary(anatomy)["non_embedding_ratio"]
        baseline_budget = f"nonembed={reached:g}"
        for method in ("flap", "shortgpt"):
            def pruned():
                pruner = AmoebaPruner(model, tokenizer)
                return pruner.prune(PruningConfig(method=method, budget=baseline_budget,
                                                  calibration_samples=args.calibration_samples,
                                                  calibration_seq_len=args.seq_len)).model
            results.get(f"{baseline_budget}/{method}", lambda: measured(pruned()))
            results.get(f"{baseline_budget}/{method}_lora",
                        lambda: measured(lora_finetune(pruned().to(args.device), tokenizer, train, rank=args.rank)))

        # extraction time and decode speed against the dense model, in this process
        def speed():
            dense = decode_ms_per_token(model, tokens=64, repeats=5)
            began = time.perf_counter()
            small = extract(bundles["smol"].path, shape=shape)
            seconds = time.perf_counter() - began
            ms = decode_ms_per_token(small.model, tokens=64, repeats=5)
            return {"extraction_seconds": round(seconds, 3), "dense_ms_per_token": round(dense, 3),
                    "extracted_ms_per_token": round(ms, 3), "speedup": round(dense / ms, 3)}
        results.get(f"{shape}/speed", speed)

    (out / "results.md").write_text(markdown(results.data, budgets))
    print((out / "results.md").read_text())
    return 0


def markdown(data: dict, budgets: list[float]) -> str:
    e = data["entries"]
    lines = ["# AmoebaLLM one-for-all fine-tuning vs baselines", "",
             f"Settings: `{json.dumps(data['settings'])}`", "",
             f"Machine: `{json.dumps(data['machine'])}`, torch threads {data.get('torch_threads')}", "",
             f"Dense perplexity: sotu:validation {e['dense']['ppl']['sotu:validation']}, brown {e['dense']['ppl']['brown']}", "",
             "Held-out perplexity (sotu:validation / brown; lower is better). All fine-tuning runs use the same "
             "training windows (sotu:train) and the same number of optimizer steps.", "",
             "FLAP and ShortGPT are pruned to the non-embedding ratio the AmoebaLLM shape reached (column 'reached').", "",
             "| budget (non-emb.) | shape | reached | row | sotu:validation | brown | params |",
             "|---|---|---|---|---|---|---|"]
    rows = [("no_finetune", "(a) AmoebaLLM shape, no fine-tuning"),
            ("oneforall_smol", "AmoebaLLM one-for-all (SMoL, balancing)"),
            ("per_subnet_lora", "(b) same shape, fine-tuned alone (plain LoRA)"),
            ("oneforall_plain_lora", "ablation: one shared plain LoRA"),
            ("oneforall_smol_no_balancing", "ablation: SMoL, no balancing"),
            ("oneforall_smol_official_draw", "ablation: SMoL, official depth draw (< L)"),
            ("flap", "(c) FLAP"), ("flap_lora", "(c) FLAP + LoRA"),
            ("shortgpt", "(c) ShortGPT"), ("shortgpt_lora", "(c) ShortGPT + LoRA")]
    for budget in budgets:
        b = f"nonembed={budget:g}"
        if f"{b}/shape" not in e:
            continue
        shape = e[f"{b}/shape"]
        baseline_budget = f"nonembed={shape['summary']['non_embedding_ratio']:g}"
        for key, label in rows:
            prefix = baseline_budget if key.startswith(("flap", "shortgpt")) else shape["shape"]
            r = e.get(f"{prefix}/{key}")
            if r is None:
                continue
            lines.append(f"| {budget:g} | {shape['shape']} | {shape['summary']['non_embedding_ratio']} | {label} | "
                         f"{r['ppl']['sotu:validation']} | "
                         f"{r['ppl']['brown']} | {r['parameters']:,} |")
    lines += ["", "Extraction and decode speed (batch 1, KV cache, 64 tokens, median of 5, same process):", "",
              "| budget | shape | extraction s | dense ms/token | extracted ms/token | speed-up |", "|---|---|---|---|---|---|"]
    for budget in budgets:
        b = f"nonembed={budget:g}"
        s = e.get(f"{e[f'{b}/shape']['shape']}/speed") if f"{b}/shape" in e else None
        if s:
            lines.append(f"| {budget:g} | {e[f'{b}/shape']['shape']} | {s['extraction_seconds']} | "
                         f"{s['dense_ms_per_token']} | {s['extracted_ms_per_token']} | {s['speedup']}x |")
    full = next((k.split("/")[0] for k in e if k.endswith("/smol_dense_shape_only")), None)
    if full:
        lines += ["", f"Sanity check, the dense shape ({full}) alone, same steps: SMoL trained on it without a sandwich "
                  f"{e[f'{full}/smol_dense_shape_only']['ppl']['sotu:validation']}, plain LoRA "
                  f"{e[f'{full}/lora_dense']['ppl']['sotu:validation']}, untouched {e['dense']['ppl']['sotu:validation']} "
                  "(sotu:validation)."]
    train = {k.split("/", 1)[1]: v["training"] for k, v in e.items() if k.startswith("train/")}
    lines += ["", "Fine-tuning runs: " + "; ".join(f"{k} {v['steps']} steps in {v['seconds_this_run']} s"
                                                    for k, v in train.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
