"""Sheared-LLaMA end to end against its baselines, side by side in one process.

On the embedded model, with three real domains of the shipped text (SOTU speeches, the Brown
corpus, Moby-Dick; Brown and Moby-Dick split by document so their held-out part is never trained):

0. the source: the embedded model (trained on SOTU only) continued on the uniform three-domain
   mixture for ``--source-steps``, so every domain has a meaningful source reference loss;
1. **sheared**: targeted pruning of the source to ``--shape`` (``--prune-steps``, dynamic batch
   loading against the source's held-out losses), then continued pre-training (``--cpt-steps``,
   dynamic, starting from pruning's final proportions);
2. (c) **sheared, constant proportions**: the same two stages with the uniform mixture throughout;
3. (b) **uniform magnitude**: the source sliced to the same shape by weight magnitude (top layers,
   KV groups, shared queries per group, MLP and hidden channels), then the same CPT (dynamic);
4. (a) **from scratch**: the same shape randomly initialised, trained on as many tokens as sheared's
   pruning and CPT together (uniform mixture, ``--scratch-lr``).

Held-out perplexity per domain is measured on windows disjoint from those the dynamic loader reads
(the first ``--heldout-windows`` of every held-out split steer the proportions; the next
``--report-windows`` are reported). Every stage is a resumable run directory under ``OUT/runs``
(not committed); finished numbers are cached in ``results.json``, so an interrupted benchmark
resumes. Writes ``results.json``, ``results.md`` and ``proportions.png`` under ``--out``.

    python -m benchmarks.sheared_cpt --threads 1
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from amoeba_sheared.config import DataConfig, TrainConfig
from amoeba_sheared.domains import DEFAULT_DOMAINS, DomainSpec
from amoeba_sheared.prune import PruneOptions
from amoeba_sheared.report import plot_proportions, proportions_history
from amoeba_sheared.run import pretrain, prune
from amoeba_sheared.target import metric_scores, resolve_target, shape_plan, source_shape

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.data import eval_windows
from amoeba_plugin.eval import PerplexityEvaluator
from amoeba_plugin.export import ExportRequest, export
from amoeba_plugin.models import load_model
from amoeba_plugin.surgery import slice_model
from benchmarks.harness import open_results, run_benchmark, write_json_atomic

HERE = Path(__file__).resolve().parent

SHAPE = "shape=layers:6,heads:4,kv_heads:2,intermediate:384,hidden:192"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="amoeba-tiny-sotu")
    p.add_argument("--shape", default=SHAPE)
    p.add_argument("--source-steps", type=int, default=150)
    p.add_argument("--prune-steps", type=int, default=120)
    p.add_argument("--cpt-steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--source-lr", type=float, default=1e-3)
    p.add_argument("--prune-lr", type=float, default=1e-3)
    p.add_argument("--cpt-lr", type=float, default=1e-3)
    p.add_argument("--scratch-lr", type=float, default=3e-3)
    p.add_argument("--prune-update-every", type=int, default=20)
    p.add_argument("--cpt-update-every", type=int, default=50)
    p.add_argument("--heldout-windows", type=int, default=16)
    p.add_argument("--report-windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(HERE / "results" / "sheared_cpt_tiny"))
    return p


def main(argv=None) -> int:
    return run_benchmark(build_parser(), run, argv)


def run(args) -> int:
    out = Path(args.out)
    runs = out / "runs"
    results = open_results(args, hide=("history",))
    specs = [DomainSpec.parse(d) for d in DEFAULT_DOMAINS]
    names = [s.name for s in specs]
    _, tokenizer = load_model(args.model)
    report = {s.name: eval_windows(tokenizer, s.heldout, args.seq_len, args.heldout_windows + args.report_windows)
              [args.heldout_windows:] for s in specs}
    ppl = PerplexityEvaluator()

    def perplexities(model_dir) -> dict:
        m, _ = load_model(str(model_dir))
        values = {n: round(ppl.evaluate(m, tokenizer, windows=w, source=n)["perplexity"], 3) for n, w in report.items()}
        values["geomean"] = round(math.exp(sum(math.log(v) for v in values.values()) / len(values)), 3)
        return {"ppl": values, "parameters": sum(p.numel() for p in m.parameters()), "config": {
            k: getattr(m.config, k) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                              "intermediate_size", "hidden_size")}, "class": type(m).__name__}

    def data(dynamic: bool, update_every: int, reference: str = "source") -> DataConfig:
        return DataConfig(dynamic=dynamic, update_every=update_every, reference=reference,
                          heldout_windows=args.heldout_windows)

    def tc(steps, lr, warmup):
        return TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=lr, warmup=warmup,
                           save_every=max(10, steps // 4), log_every=10)

    def stage_entry(summary: dict, run_dir: Path) -> dict:
        return {"summary": {k: v for k, v in summary.items() if k not in ("proportions_history",)},
                **perplexities(run_dir / "model"), "history": proportions_history(run_dir)}

    def trained(key, run_name, model, dynamic, lr, reference="source", steps=None, warmup=0.03, init="pretrained"):
        """An entry made by (continued) pre-training ``model`` in ``runs/run_name``."""
        run_dir = runs / run_name
        return results.get(key, lambda: stage_entry(pretrain(
            str(model), run_dir, data(dynamic, args.cpt_update_every, reference),
            tc(steps or args.cpt_steps, lr, warmup), init=init, show_progress=not args.quiet), run_dir))

    results.get("original", lambda: perplexities(amoeba_plugin.models.resolve_model_path(args.model)))
    trained("source", "source", args.model, False, args.source_lr, steps=args.source_steps, warmup=0.1)
    source_model = str(runs / "source" / "model")
    from_source = f"model:{source_model}"
    scratch_steps = args.prune_steps + args.cpt_steps

    for label, dynamic in (("sheared", True), ("sheared-constant", False)):
        pruned = runs / f"prune-{label}"
        results.get(f"{label}/pruned", lambda: stage_entry(prune(
            source_model, pruned, args.shape, data(dynamic, args.prune_update_every),
            tc(args.prune_steps, args.prune_lr, 0.1), PruneOptions(), show_progress=not args.quiet), pruned))
        trained(f"{label}/cpt", f"cpt-{label}", pruned / "model", dynamic, args.cpt_lr)

    magnitude = runs / "magnitude"

    def magnitude_prune() -> dict:
        model, tok = load_model(source_model)
        anatomy = anatomy_of(model)
        shape = resolve_target(source_shape(anatomy), Budget.parse(args.shape).value)
        plan = shape_plan(anatomy, shape, metric_scores(model, anatomy, "magnitude"), method="uniform magnitude")
        sliced = slice_model(model, anatomy, plan)
        export("auto", ExportRequest(model, anatomy, plan, tok, info={"method": "uniform magnitude"}, sliced=sliced),
               magnitude, overwrite=True)
        return perplexities(magnitude)

    results.get("magnitude/pruned", magnitude_prune)
    trained("magnitude/cpt", "cpt-magnitude", magnitude, True, args.cpt_lr, from_source)
    trained("scratch/cpt", "scratch", magnitude, False, args.scratch_lr, from_source, scratch_steps, 0.1, "random")
    # learning-rate check: each arm at the other's learning rate (CPT 1e-3 vs scratch 3e-3 by default)
    trained("sheared/cpt@scratch-lr", "cpt-sheared-scratch-lr", runs / "prune-sheared" / "model", True,
            args.scratch_lr)
    trained("scratch/cpt@cpt-lr", "scratch-cpt-lr", magnitude, False, args.cpt_lr, from_source, scratch_steps, 0.1,
            "random")

    results.data["tokens"] = {"per_step": args.batch_size * args.seq_len,
                              "source": args.source_steps * args.batch_size * args.seq_len,
                              "pruning": args.prune_steps * args.batch_size * args.seq_len,
                              "cpt": args.cpt_steps * args.batch_size * args.seq_len,
                              "scratch": (args.prune_steps + args.cpt_steps) * args.batch_size * args.seq_len}
    write_json_atomic(out / "results.json", results.data)
    (out / "results.md").write_text(markdown(results.data, names))
    e = results.data["entries"]
    plot_proportions({"Sheared: pruning": tuple(e["sheared/pruned"]["history"]),
                      "Sheared: CPT": tuple(e["sheared/cpt"]["history"]),
                      "(b) uniform magnitude: CPT": tuple(e["magnitude/cpt"]["history"])},
                     out / "proportions.png", "Dynamic batch loading: domain proportions (embedded model)")
    print((out / "results.md").read_text())
    return 0


def markdown(data: dict, names: list[str]) -> str:
    """The table: per-domain held-out perplexity, their geometric mean, and the worst domain's
    perplexity relative to the source's (Sheared's aim: every domain back to its reference)."""
    e, t = data["entries"], data["tokens"]
    cols = names + ["geomean"]
    source = e["source"]["ppl"]
    lines = ["| model | stage | parameters | " + " | ".join(f"{c} ppl" for c in cols) + " | worst domain / source |",
             "|---|---|---|" + "---|" * len(cols) + "---|"]

    def row(label, stage, entry):
        worst = max(entry["ppl"][n] / source[n] for n in names)
        lines.append(f"| {label} | {stage} | {entry['parameters']:,} | "
                     + " | ".join(f"{entry['ppl'][c]:.2f}" for c in cols) + f" | {worst:.3f} |")

    row("embedded model (SOTU only)", "-", e["original"])
    row("source (embedded + 3-domain mixture)", f"+{t['source']:,} tokens", e["source"])
    for key, label in (("sheared", "**Sheared** (dynamic loading)"),
                       ("sheared-constant", "(c) Sheared, constant proportions"),
                       ("magnitude", "(b) uniform magnitude + CPT (dynamic)")):
        row(label, "pruned" + (f" ({t['pruning']:,} tokens)" if key != "magnitude" else " (no training)"),
            e[f"{key}/pruned"])
        row(label, f"+ CPT ({t['cpt']:,} tokens)", e[f"{key}/cpt"])
    row("(a) from scratch (same shape)", f"{t['scratch']:,} tokens", e["scratch/cpt"])
    lr = data["settings"]
    lines += ["", f"Learning-rate check (each arm at the other's peak learning rate; CPT {lr['cpt_lr']:g}, "
              f"scratch {lr['scratch_lr']:g} above):", "", lines[0], lines[1]]
    row(f"**Sheared** (dynamic loading), CPT at lr {lr['scratch_lr']:g}", f"+ CPT ({t['cpt']:,} tokens)",
        e["sheared/cpt@scratch-lr"])
    row(f"(a) from scratch, lr {lr['cpt_lr']:g}", f"{t['scratch']:,} tokens", e["scratch/cpt@cpt-lr"])
    s = e["sheared/pruned"]["summary"]
    lines += ["", f"Target shape: {s['target']}; exported as `{e['sheared/pruned']['class']}` "
              f"(config: {e['sheared/pruned']['config']}); masked vs sliced logits: max |diff| "
              f"{s['masked_vs_sliced_max_abs']:.2e}.", "",
              "Final proportions (" + ", ".join(names) + "):"]
    for key in ("sheared/pruned", "sheared/cpt", "magnitude/cpt"):
        lines.append(f"* {key}: " + ", ".join(f"{p:.3f}" for p in e[key]["summary"]["final_proportions"]))
    lines += ["", "Reference losses (the source model on the update windows): "
              + ", ".join(f"{n} {v:.3f}" for n, v in s["reference"].items())]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in e.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
