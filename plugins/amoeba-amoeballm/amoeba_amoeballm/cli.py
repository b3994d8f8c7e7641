"""``amoeba amoeballm select|train|shapes|latency`` and ``amoeba extract``, added through
``amoeba_register_commands``. Every command is a thin layer over the Python API of this package."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from amoeba_plugin.errors import AmoebaError


def _echo_table(rows: list[dict], keys: list[str]) -> None:
    cells = [[str(r.get(k, "")) if r.get(k) is not None else "-" for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    click.echo("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _widths(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(eval_fraction(p)) for p in text.split(",") if p.strip())
    except ValueError:
        raise AmoebaError(f"cannot read the width list '{text}'", "write e.g. 1,0.875,0.75,0.625 or 1,7/8,3/4") from None


def eval_fraction(text: str) -> float:
    """``"0.75"`` or ``"3/4"`` (the official CLI wrote widths as fractions)."""
    num, sep, den = text.strip().partition("/")
    return float(num) / float(den) if sep else float(num)


@click.group("amoeballm")
def amoeballm():
    """AmoebaLLM one-for-all bundles: select (DP depth + width masks), train (SMoL, sandwich,
    distillation), shapes, latency; then `amoeba extract BUNDLE --budget ...`."""


@amoeballm.command()
@click.argument("model")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--min-layers", type=int, default=None, help="Smallest depth (default: half the layers).")
@click.option("--keep-last", type=int, default=1, show_default=True, help="Last layers the DP never removes.")
@click.option("--depth-scorer", default="loss", show_default=True,
              help="Knowledge-preservation score: loss, perplexity or lm-eval:TASK (e.g. lm-eval:amoeba_sotu_cloze_calib).")
@click.option("--questions", type=int, default=None, help="lm-eval scorer: questions drawn (stratified, seeded).")
@click.option("--widths", default="1,0.875,0.75,0.625,0.5", show_default=True, help="Width ratios, largest first.")
@click.option("--allocation", type=click.Choice(["global", "uniform"]), default="global", show_default=True,
              help="global: FLAP per-layer widths; uniform: same width per layer (stock HF exports).")
@click.option("--bias-compensation/--no-bias-compensation", default=True, show_default=True)
@click.option("--calibration", default="sotu:train", show_default=True, help="Calibration text source.")
@click.option("--samples", default=32, show_default=True, type=int, help="Calibration windows.")
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
def select(model, output, min_layers, keep_last, depth_scorer, questions, widths, allocation, bias_compensation,
           calibration, samples, seq_len, seed, overwrite):
    """Stage 1: choose the layers of every depth and the channels of every width; write a bundle."""
    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.api import get_calibration_dataset
    from amoeba_plugin.export import check_destination
    from amoeba_plugin.models import load_model

    from .bundle import write_bundle
    from .select import SelectionConfig, run_selection

    check_destination(output, overwrite)
    config = SelectionConfig(min_layers=min_layers, keep_last=keep_last, depth_scorer=depth_scorer,
                             scorer_options={"num_questions": questions} if questions else {},
                             widths=_widths(widths), allocation=allocation, bias_compensation=bias_compensation)
    loaded, tokenizer = load_model(model)
    anatomy = anatomy_of(loaded)
    config.resolved_min_layers(anatomy.num_layers)
    windows = get_calibration_dataset(tokenizer, calibration, samples, seq_len, seed)
    table, report = run_selection(loaded, tokenizer, anatomy, windows, config, seed=seed)
    report["calibration"] = calibration
    base = str(Path(model).resolve()) if Path(model).is_dir() else model  # a name stays a name
    bundle = write_bundle(output, base, anatomy, table, report, overwrite)
    click.echo(f"bundle written to {bundle.path}")
    click.echo(f"DP: {report['dp_evaluations']} subnet evaluations, {report['seconds_per_evaluation']} s each; "
               f"depths {min(table.depth.depths())}..{anatomy.num_layers}, widths {', '.join(f'{w:g}' for w in table.widths)}")


@amoeballm.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Windows per process and micro-batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--source", default="sotu:train", show_default=True, help="Training text.")
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--pool", type=int, default=2048, show_default=True, help="Training windows drawn from the source.")
@click.option("--random-subnets", type=int, default=2, show_default=True, help="Random subnets per step (K-2).")
@click.option("--full-depth-random/--official-depth-draw", default=True, show_default=True,
              help="Random subnets may keep every layer (the official draw never trains full-depth narrow shapes).")
@click.option("--experts", type=int, default=5, show_default=True, help="LoRA experts per linear (1: plain LoRA).")
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--alpha", type=float, default=16.0, show_default=True)
@click.option("--top-k", type=int, default=2, show_default=True)
@click.option("--mixing", type=click.Choice(["weights", "outputs"]), default="weights", show_default=True,
              help="weights: mix A and B (official, mergeable); outputs: mix the experts' outputs.")
@click.option("--balancing/--no-balancing", default=True, show_default=True, help="Loss-magnitude balancing.")
@click.option("--distill/--no-distill", default=True, show_default=True, help="In-place distillation.")
@click.option("--save-every", type=int, default=50, show_default=True)
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and start from step 0.")
def train(bundle, steps, batch_size, grad_accum, lr, source, seq_len, pool, random_subnets, experts, rank, alpha,
          top_k, mixing, balancing, distill, save_every, log_every, seed, restart, full_depth_random):
    """Stage 2: one-for-all fine-tuning of the SMoL adapter; resumes from the bundle's checkpoint.

    Several processes: `accelerate launch --num_processes 2 -m amoeba_amoeballm train BUNDLE`."""
    from .smol import SMoLConfig
    from .train import TrainConfig, train_bundle

    config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, source=source,
                         seq_len=seq_len, pool=pool, num_random=random_subnets, full_depth_random=full_depth_random,
                         balancing=balancing, distill=distill,
                         save_every=save_every, log_every=log_every, seed=seed)
    smol = SMoLConfig(num_experts=experts, rank=rank, alpha=alpha, top_k=min(top_k, experts), mixing=mixing)
    summary = train_bundle(bundle, config, smol, restart=restart)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per run, from the main process
        return
    if summary["resumed_from"]:
        click.echo(f"resumed from step {summary['resumed_from']}")
    click.echo(f"trained {summary['steps']}/{summary['of_steps']} steps in {summary['seconds_this_run']} s "
               f"on {summary['processes']} process(es); log: {bundle}/train_log.jsonl")


@amoeballm.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def shapes(bundle, as_json):
    """Every (depth, width) of a bundle: parameters, MACs, score and this machine's latency if measured."""
    from .bundle import LATENCY, Bundle
    from .extract import machine_key, shape_rows

    b = Bundle.load(bundle)
    model, _, anatomy = b.load_base()
    key, _ = machine_key("cpu", next(model.parameters()).dtype)
    path = b.path / LATENCY / f"{key}.json"
    latency = json.loads(path.read_text()) if path.exists() else None
    rows = shape_rows(b.table, anatomy, b.shape_scores, latency)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    keys = ["shape", "parameters_ratio", "non_embedding_ratio", "macs_ratio"]
    keys += ["score"] if b.shape_scores else []
    keys += ["latency_ms", "latency_ratio"] if latency else []
    _echo_table(rows, keys)


@amoeballm.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--rebuild", is_flag=True, help="Measure again even if this machine's table exists.")
@click.option("--tokens", type=int, default=32, show_default=True, help="Tokens decoded per measurement.")
def latency(bundle, rebuild, tokens):
    """Measure decode latency of every shape on this machine, once; stored in the bundle."""
    from .bundle import Bundle
    from .extract import latency_table

    table = latency_table(Bundle.load(bundle), rebuild=rebuild, tokens=tokens)
    click.echo(f"dense: {table['dense_ms']:.3f} ms/token; {len(table['ms'])} shapes measured "
               f"({table['machine']['processor']}, {table['machine']['threads']} threads)")


def _extract_command():
    @click.command("extract")
    @click.argument("bundle", type=click.Path(exists=True, file_okay=False))
    @click.option("--budget", "-b", default=None,
                  help="params (0.5), nonembed=0.6, count=3e6, macs=0.5, latency=0.6 or latency=8ms.")
    @click.option("--shape", default=None, help="An explicit DEPTHxWIDTH instead of a budget, e.g. 6x0.75.")
    @click.option("--output", "-o", required=True, type=click.Path(file_okay=False))
    @click.option("--exporter", default="auto", show_default=True, help="auto, hf (stock only) or amoeba.")
    @click.option("--overwrite", is_flag=True)
    def extract(bundle, budget, shape, output, exporter, overwrite):
        """Extract a standalone model of the best shape for a budget from an AmoebaLLM bundle."""
        from amoeba_plugin.export import check_destination

        from .extract import export_extraction
        from .extract import extract as run

        check_destination(output, overwrite)
        result = run(bundle, budget=budget, shape=shape)
        path = export_extraction(result, output, exporter, overwrite)
        s = result.info["summary"]
        click.echo(f"shape {result.shape} ({result.info['reason']}): {s['layers']} layers, "
                   f"{s['parameters_ratio']:.1%} of parameters, {s['non_embedding_ratio']:.1%} non-embedding; "
                   f"extracted in {result.info['extraction_seconds']:.2f} s -> {path}")

    return extract


extract = _extract_command()

__all__ = ["amoeballm", "extract"]
