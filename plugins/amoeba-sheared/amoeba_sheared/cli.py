"""``amoeba sheared prune|train|reference|proportions``, added through ``amoeba_register_commands``.
Thin layers over :mod:`amoeba_sheared.run`; under ``accelerate launch -m amoeba_sheared ...`` they
run on several processes unchanged (one report, from the main process)."""
from __future__ import annotations

import json
import os

import click


def _data_options(update_every: int):
    def wrap(f):
        for option in reversed([
            click.option("--domain", "domains", multiple=True,
                         help="NAME=TRAIN_SOURCE,HELD_OUT_SOURCE (repeat; default: sotu, brown, moby-dick)."),
            click.option("--proportions", default=None, help="Initial proportions, one per domain (default: uniform)."),
            click.option("--dynamic/--constant", default=True, show_default=True,
                         help="Dynamic batch loading, or constant proportions."),
            click.option("--update-every", type=int, default=update_every, show_default=True,
                         help="Steps between proportion updates."),
            click.option("--reference", default="source", show_default=True,
                         help="source, scaling:FILE.json, model:PATH or NAME=LOSS,..."),
            click.option("--heldout-windows", type=int, default=16, show_default=True,
                         help="Held-out windows per domain for the updates."),
            click.option("--no-clip", is_flag=True, help="Use the official code's unclipped loss gap."),
        ]):
            f = option(f)
        return f
    return wrap


def _train_options(lr: float, warmup: float):
    def wrap(f):
        for option in reversed([
            click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
                         help="Run directory (checkpoint, log; the model goes to OUTPUT/model)."),
            click.option("--steps", type=int, default=200, show_default=True),
            click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per process and micro-batch."),
            click.option("--grad-accum", type=int, default=1, show_default=True),
            click.option("--seq-len", type=int, default=256, show_default=True),
            click.option("--lr", type=float, default=lr, show_default=True),
            click.option("--warmup", type=float, default=warmup, show_default=True, help="Fraction of steps of LR warm-up."),
            click.option("--save-every", type=int, default=50, show_default=True),
            click.option("--log-every", type=int, default=10, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--restart", is_flag=True, help="Ignore the checkpoint and start from step 0."),
        ]):
            f = option(f)
        return f
    return wrap


def _configs(o: dict):
    from .config import DataConfig, TrainConfig

    data = DataConfig(domains=list(o["domains"]) or DataConfig().domains, proportions=o["proportions"],
                      dynamic=o["dynamic"], update_every=o["update_every"], reference=o["reference"],
                      heldout_windows=o["heldout_windows"], clip=not o["no_clip"])
    train = TrainConfig(steps=o["steps"], batch_size=o["batch_size"], grad_accum=o["grad_accum"], seq_len=o["seq_len"],
                        lr=o["lr"], warmup=o["warmup"], save_every=o["save_every"], log_every=o["log_every"],
                        seed=o["seed"])
    return data, train


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
@click.option("--weights", type=click.Choice(["full", "frozen", "lora"]), default="full", show_default=True,
              help="Train the weights with the masks, freeze them, or train LoRA adapters instead.")
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--mask-lr", type=float, default=1.0, show_default=True)
@click.option("--lambda-lr", type=float, default=1.0, show_default=True)
@click.option("--target-warmup", type=float, default=0.2, show_default=True, help="Fraction of steps the target ramps over.")
@_train_options(lr=1e-4, warmup=0.1)
@_data_options(update_every=50)
def prune(model, target, weights, lora_rank, lora_alpha, mask_lr, lambda_lr, target_warmup, **o):
    """Targeted structured pruning of MODEL to --target; the result is OUTPUT/model.

    Several processes: `accelerate launch --num_processes 2 -m amoeba_sheared prune MODEL ...`."""
    from .prune import PruneOptions
    from .run import prune as run

    data, train = _configs(o)
    options = PruneOptions(weights=weights, lora_rank=lora_rank, lora_alpha=lora_alpha, mask_lr=mask_lr,
                           lambda_lr=lambda_lr, target_warmup=target_warmup)
    summary = run(model, o["output"], target, data, train, options, restart=o["restart"])
    _report(summary)
    if summary.get("finished") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"shape {summary['target']} ({summary['stock']}, {summary['parameters']:,} parameters); "
                   f"masked vs sliced logits differ by at most {summary['masked_vs_sliced_max_abs']:.2e}")


@sheared.command("train")
@click.argument("model")
@click.option("--init", type=click.Choice(["pretrained", "random"]), default="pretrained", show_default=True,
              help="random: the same shape from scratch (a baseline).")
@_train_options(lr=1e-4, warmup=0.03)
@_data_options(update_every=400)
def train_command(model, init, **o):
    """Continued pre-training of MODEL (e.g. OUTPUT/model of `sheared prune`) on the domain mixture."""
    from .run import pretrain

    data, train = _configs(o)
    _report(pretrain(model, o["output"], data, train, restart=o["restart"], init=init))


@sheared.command()
@click.argument("model", required=False)
@click.option("--domain", "domains", multiple=True, help="As for prune (default: sotu, brown, moby-dick).")
@click.option("--scaling", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON {"parameters": [...], "losses": {"DOMAIN": [...]}} of a model family.')
@click.option("--parameters", type=float, default=None, help="Model size to predict the losses for (with --scaling).")
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--heldout-windows", type=int, default=16, show_default=True)
def reference(model, domains, scaling, parameters, seq_len, heldout_windows):
    """Reference losses: MODEL's held-out loss per domain, or a scaling-law fit (--scaling, --parameters)."""
    from amoeba_plugin.errors import AmoebaError

    from .config import DataConfig

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

    data = DataConfig(domains=list(domains) or DataConfig().domains, reference=f"model:{model}",
                      heldout_windows=heldout_windows)
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
