"""``amoeba amoeballm select|train|shapes|latency`` and ``amoeba extract``, added through
``amoeba_register_commands``. Every command is a thin layer over the Python API of this package."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from amoeba_plugin.cli.options import calibration_options, echo_table, export_options, option_flags

from .select import SelectionConfig, parse_fraction
from .smol import SMoLConfig
from .train import TrainConfig

eval_fraction = parse_fraction  # the name it had here


def _echo_table(rows: list[dict], keys: list[str]) -> None:
    echo_table([[r.get(k) for k in keys] for r in rows], keys)


@click.group("amoeballm")
def amoeballm():
    """AmoebaLLM one-for-all bundles: select (DP depth + width masks), train (SMoL, sandwich,
    distillation), shapes, latency; then `amoeba extract BUNDLE --budget ...`."""


@amoeballm.command()
@click.argument("model")
@export_options(required=True, exporter=False, help="Bundle directory to write.")
@option_flags(SelectionConfig, exclude=("scorer_options",), into="selection")
@click.option("--questions", type=int, default=None, help="lm-eval depth scorer: questions drawn (stratified, seeded).")
@calibration_options()
def select(model, output, overwrite, selection, questions, calibration, calibration_samples, calibration_seq_len, seed):
    """Stage 1: choose the layers of every depth and the channels of every width; write a bundle."""
    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.api import get_calibration_dataset
    from amoeba_plugin.export import check_destination
    from amoeba_plugin.models import load_model

    from .bundle import write_bundle
    from .select import run_selection

    check_destination(output, overwrite)  # a file in the way, a read-only place: before any work
    config = SelectionConfig(**selection, scorer_options={"num_questions": questions} if questions else {})
    from amoeba_plugin.data import TextSpec

    TextSpec.resolve(calibration, "calibration")  # a mistyped source fails before the model loads
    loaded, tokenizer = load_model(model)
    anatomy = anatomy_of(loaded)
    config.resolved_min_layers(anatomy.num_layers)
    windows = get_calibration_dataset(tokenizer, calibration, calibration_samples, calibration_seq_len, seed)
    table, report = run_selection(loaded, tokenizer, anatomy, windows, config, seed=seed)
    report["calibration"] = calibration
    base = str(Path(model).resolve()) if Path(model).is_dir() else model  # a name stays a name
    bundle = write_bundle(output, base, anatomy, table, report, overwrite)
    click.echo(f"bundle written to {bundle.path}")
    click.echo(f"DP: {report['dp_evaluations']} subnet evaluations, {report['seconds_per_evaluation']} s each; "
               f"depths {min(table.depth.depths())}..{anatomy.num_layers}, widths {', '.join(f'{w:g}' for w in table.widths)}")


@amoeballm.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@option_flags(TrainConfig, into="config", aliases={"num_random": ("--random-subnets",)},
              decls={"full_depth_random": ("--full-depth-random/--official-depth-draw",)})
@option_flags(SMoLConfig, include=("num_experts", "rank", "alpha", "top_k", "mixing"), into="smol",
              aliases={"num_experts": ("--experts",)})
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and start from step 0.")
def train(bundle, config, smol, restart):
    """Stage 2: one-for-all fine-tuning of the SMoL adapter; resumes from the bundle's checkpoint.

    Several processes: `accelerate launch --num_processes 2 -m amoeba_amoeballm train BUNDLE`."""
    from .train import train_bundle

    smol["top_k"] = min(smol["top_k"], smol["num_experts"])
    summary = train_bundle(bundle, TrainConfig(**config), SMoLConfig(**smol), restart=restart)
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
    from amoeba_plugin.statefiles import read_json

    from .bundle import LATENCY, Bundle
    from .extract import machine_key, shape_rows

    b = Bundle.load(bundle)
    model, _, anatomy = b.load_base()
    key, _ = machine_key("cpu", next(model.parameters()).dtype)
    path = b.path / LATENCY / f"{key}.json"
    latency = read_json(path, "latency table", f"run `amoeba amoeballm latency {bundle} --rebuild`", default=None)
    rows = shape_rows(b.table, anatomy, b.shape_scores, latency)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    keys = ["shape", "parameters_ratio", "non_embedding_ratio", "macs_ratio"]
    keys += ["score"] if b.shape_scores else []
    keys += ["latency_ms", "latency_ratio", "latency_spread"] if latency else []
    _echo_table(rows, keys)


@amoeballm.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--rebuild", is_flag=True, help="Measure again even if this machine's table exists.")
@click.option("--tokens", type=int, default=32, show_default=True, help="Tokens decoded per measurement.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timings per shape, each paired with one of the dense model; the ratio is their median.")
def latency(bundle, rebuild, tokens, repeats):
    """Measure decode latency of every shape on this machine, once; stored in the bundle."""
    from .bundle import Bundle
    from .extract import SPREAD_WARNING, latency_table

    from amoeba_plugin.statefiles import check_writable

    loaded = Bundle.load(bundle)
    check_writable(loaded.path, "bundle")  # the table is stored there: fail before measuring
    table = latency_table(loaded, rebuild=rebuild, tokens=tokens, repeats=repeats)
    click.echo(f"dense: {table['dense_ms']:.3f} ms/token; {len(table['ms'])} shapes measured "
               f"({table['machine']['processor']}, {table['machine']['threads']} threads)")
    if table.get("max_spread") is not None:
        verdict = "large: a latency budget is uncertain" if table["max_spread"] > SPREAD_WARNING else "small"
        click.echo(f"spread of the paired ratios over {table['repeats']} repeats: up to {table['max_spread']:.1%} "
                   f"({verdict}); dense {table['dense_spread']:.1%}")
    else:
        click.echo("this table was measured once per shape (before repeats): rebuild with --rebuild to get its spread")


def _extract_command():
    @click.command("extract")
    @click.argument("bundle", type=click.Path(exists=True, file_okay=False))
    @click.option("--budget", "-b", default=None,
                  help="params (0.5), nonembed=0.6, count=3e6, macs=0.5, latency=0.6 or latency=8ms.")
    @click.option("--shape", default=None, help="An explicit DEPTHxWIDTH instead of a budget, e.g. 6x0.75.")
    @export_options(required=True)
    def extract(bundle, budget, shape, output, exporter, export_dtype, overwrite):
        """Extract a standalone model of the best shape for a budget from an AmoebaLLM bundle."""
        from amoeba_plugin.export import check_destination

        from .extract import export_extraction
        from .extract import extract as run

        check_destination(output, overwrite)
        result = run(bundle, budget=budget, shape=shape)
        path = export_extraction(result, output, exporter, overwrite, dtype=export_dtype)
        s = result.info["summary"]
        click.echo(f"shape {result.shape} ({result.info['reason']}): {s['layers']} layers, "
                   f"{s['parameters_ratio']:.1%} of parameters, {s['non_embedding_ratio']:.1%} non-embedding; "
                   f"extracted in {result.info['extraction_seconds']:.2f} s -> {path}")

    return extract


extract = _extract_command()

__all__ = ["amoeballm", "extract"]
