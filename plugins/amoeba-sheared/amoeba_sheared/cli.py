"""``amoeba sheared prune|train|reference|proportions``, added through ``amoeba_register_commands``.
Thin layers over :mod:`amoeba_sheared.run`; under ``accelerate launch -m amoeba_sheared ...`` they
run on several processes unchanged (one report, from the main process)."""
from __future__ import annotations

import json
import os

import click

from amoeba_plugin.cli.options import option_flags

from .config import CPT_DATA_DEFAULTS, CPT_TRAIN_DEFAULTS, DataConfig, TrainConfig
from .prune import PruneOptions

#: the data flags' names where they are not the field's
_DATA_FLAGS = {"domains": ("--domain",), "dynamic": ("--dynamic/--constant",), "clip": ("--clip/--no-clip",)}


def _run_options(data_defaults: dict | None = None, train_defaults: dict | None = None):
    """--output, --restart, the training flags (TrainConfig) and the data flags (DataConfig), as ``train`` and
    ``data`` instances; ``*_defaults`` restate a default on purpose (continued pre-training's)."""
    def wrap(f):
        f = option_flags(DataConfig, into="data", build=True, defaults=data_defaults, decls=_DATA_FLAGS)(f)
        f = click.option("--restart", is_flag=True, help="Ignore the checkpoint and start from step 0.")(f)
        f = option_flags(TrainConfig, into="train", build=True, defaults=train_defaults)(f)
        return click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
                            help="Run directory (checkpoint, log; the model goes to OUTPUT/model).")(f)
    return wrap


def _report(summary: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if summary["resumed_from"]:
        click.echo(f"resumed from step {summary['resumed_from']}")
    click.echo(f"{summary['stage']}: {summary['steps']}/{summary['of_steps']} steps in {summary['seconds_this_run']} s "
               f"on {summary['processes']} process(es)")
    props = ", ".join(f"{d} {p:.3f}" for d, p in zip(summary["domains"], summary["final_proportions"]))
    click.echo(f"proportions: {props}")
    if summary.get("finished"):
        losses = ", ".join(f"{d} {v:.3f}" for d, v in summary["heldout_loss"].items())
        click.echo(f"held-out loss: {losses}")
        click.echo(f"model written to {summary['model']}")


@click.group("sheared")
def sheared():
    """Sheared-LLaMA: prune to an exact shape (L0 masks + Lagrangian), then continued pre-training,
    both with dynamic batch loading; resumable, and runs under `accelerate launch`."""


@sheared.command()
@click.argument("model")
@click.option("--target", "-t", required=True,
              help="shape=layers:6,heads:4,kv_heads:2,intermediate:384,hidden:192, "
                   "or a parameter budget (0.5, nonembed=0.4, count=3e6).")
@option_flags(PruneOptions, into="options", build=True)
@_run_options()
def prune(model, target, options, output, train, data, restart):
    """Targeted structured pruning of MODEL to --target; the result is OUTPUT/model.

    Several processes: `accelerate launch --num_processes 2 -m amoeba_sheared prune MODEL ...`."""
    from .run import prune as run

    summary = run(model, output, target, data, train, options, restart=restart)
    _report(summary)
    if summary.get("finished") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"shape {summary['target']} ({summary['stock']}, {summary['parameters']:,} parameters); "
                   f"masked vs sliced logits differ by at most {summary['masked_vs_sliced_max_abs']:.2e}")


@sheared.command("train")
@click.argument("model")
@click.option("--init", type=click.Choice(["pretrained", "random"]), default="pretrained", show_default=True,
              help="random: the same shape from scratch (a baseline).")
@_run_options(data_defaults=CPT_DATA_DEFAULTS, train_defaults=CPT_TRAIN_DEFAULTS)
def train_command(model, init, output, train, data, restart):
    """Continued pre-training of MODEL (e.g. OUTPUT/model of `sheared prune`) on the domain mixture."""
    from .run import pretrain

    _report(pretrain(model, output, data, train, restart=restart, init=init))


@sheared.command()
@click.argument("model", required=False)
@option_flags(DataConfig, include=("domains", "heldout_windows"), decls=_DATA_FLAGS)
@click.option("--scaling", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON {"parameters": [...], "losses": {"DOMAIN": [...]}} of a model family.')
@click.option("--parameters", type=float, default=None, help="Model size to predict the losses for (with --scaling).")
@option_flags(TrainConfig, include=("seq_len",))
def reference(model, domains, scaling, parameters, seq_len, heldout_windows):
    """Reference losses: MODEL's held-out loss per domain, or a scaling-law fit (--scaling, --parameters)."""
    from amoeba_plugin.errors import AmoebaError

    if scaling:
        from .reference import fit_scaling_law, predict, read_family

        if parameters is None:
            raise AmoebaError("--scaling needs --parameters, the size to predict for", "add e.g. --parameters 3.3e6")
        sizes, family = read_family(scaling)
        for name, losses in family.items():
            fit = fit_scaling_law(sizes, losses)
            click.echo(f"{name}: L(N) = {fit[0]:.4g} / N^{fit[1]:.4f} + {fit[2]:.4f}  ->  {predict(fit, parameters):.4f}")
        return
    if model is None:
        raise AmoebaError("give a MODEL, or --scaling FILE --parameters N", "e.g. amoeba sheared reference amoeba-tiny-sotu")
    from accelerate import Accelerator

    from amoeba_plugin.models import load_model

    from .domains import load_domains
    from .run import reference_losses

    data = DataConfig(domains=list(domains), reference=f"model:{model}", heldout_windows=heldout_windows)
    loaded, tokenizer = load_model(model)
    domains_ = load_domains(tokenizer, data.specs, seq_len, heldout_windows)
    losses = reference_losses(data, domains_, Accelerator(), source=loaded)
    click.echo(",".join(f"{n}={v:.4f}" for n, v in zip(data.names, losses)))


@sheared.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the proportions.")
@click.option("--json", "as_json", is_flag=True)
def proportions(run_dir, plot, as_json):
    """How a run's domain proportions moved (one row per update)."""
    from .report import plot_proportions, proportions_history

    if plot:
        from amoeba_plugin.statefiles import check_writable

        check_writable(plot, "plot", directory=False)
    domains, rows = proportions_history(run_dir)
    if as_json:
        click.echo(json.dumps({"domains": domains, "history": rows}, indent=1))
    else:
        click.echo("step  " + "  ".join(f"{d:>10}" for d in domains))
        for r in rows:
            click.echo(f"{r['step']:>4}  " + "  ".join(f"{p:>10.4f}" for p in r["proportions"]))
    if plot:
        click.echo(f"plot written to {plot_proportions({run_dir: (domains, rows)}, plot)}")


__all__ = ["sheared"]
