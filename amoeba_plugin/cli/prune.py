"""``amoeba prune MODEL`` (a method to a budget, then export) and ``amoeba export MODEL --plan``."""
from __future__ import annotations

import click

from .common import load, parameter_lines, status
from .options import (calibration_options, evaluation_options, export_options, flag, option_pairs, parse_options,
                      pruning_defaults, pruning_settings)

_DEFAULTS = pruning_defaults()


@click.command()
@click.argument("model")
@flag("--method", "-m", default=_DEFAULTS["method"], show_default=True,
      help="See `amoeba methods` (and `amoeba methods NAME` for its options).")
@flag("--budget", "-b", default=_DEFAULTS["budget"], show_default=True,
      help="Fraction to keep: 0.5, nonembed=0.6, macs=0.5, count=3e6, shape=layers:6,heads:4.")
@calibration_options()
@export_options()
@evaluation_options()
@option_pairs()
@flag("--recover", "recovery", default=None, metavar="tokens=N[,loss=lm,...]",
      help="Then heal the pruned model by distillation from MODEL (see `amoeba recover`, docs/recovery.md).")
@click.option("--config", "config_path", type=click.Path(dir_okay=True), default=None,
              help="Read settings from a pruning_config.json (flags given explicitly still win).")
def prune(model, options, config_path, output, overwrite, evaluate, **settings):
    """Prune MODEL to a budget and (with --output) export the result."""
    from ..api import AmoebaPruner, PruningConfig, preflight

    ctx = click.get_current_context()
    settings = pruning_settings(settings)
    settings["method_options"] = parse_options(options)
    if config_path:
        from click.core import ParameterSource

        base = PruningConfig.from_pretrained(config_path).to_dict()
        for key in list(settings):
            if ctx.get_parameter_source("options" if key == "method_options" else key) == ParameterSource.DEFAULT:
                settings[key] = base[key]
    config = PruningConfig(**settings)  # validates the budget and the numbers
    preflight(config, output, overwrite, evaluate)  # method and options, sources, exporter, output dir: before loading

    loaded, tokenizer = load(model)
    pruner = AmoebaPruner.from_pretrained(loaded, tokenizer=tokenizer)
    pruner.name = model
    with status(f"pruning with {config.method} to {config.budget_spec}"
                + (f", recovering on {config.recovery.tokens:,} tokens" if config.recovery is not None else "")
                + (" and exporting" if output else "") + (" (with evaluation)" if evaluate else "")):
        out = pruner.prune(config, save_directory=output, overwrite=overwrite, evaluate=evaluate)
    for line in parameter_lines(pruner.anatomy, out.plan):
        click.echo(line)
    shape = out.summary.get("shape") or []
    if shape and out.summary.get("uniform"):
        s = shape[0]
        click.echo(f"shape:          {len(shape)} layers, {s['query_heads']} query heads, {s['kv_groups']} KV groups, "
                   f"head_dim {s['head_dim']}, intermediate {s['intermediate_size']}")
    elif shape:
        click.echo(f"shape:          {len(shape)} layers, per-layer shapes differ (see plan.json)")
    if out.perplexity_before is not None and "perplexity_pruned" in out.summary:
        click.echo(f"perplexity ({config.evaluation}): {out.perplexity_before:.3f} -> "
                   f"{out.summary['perplexity_pruned']:.3f} pruned -> {out.perplexity_after:.3f} recovered")
    elif out.perplexity_before is not None:
        click.echo(f"perplexity ({config.evaluation}): {out.perplexity_before:.3f} -> {out.perplexity_after:.3f}")
    if out.recovery is not None:
        click.echo(f"recovery:       {out.recovery.tokens:,} tokens of {config.recovery.source} with "
                   f"loss={config.recovery.loss} in {out.recovery.wall_s:.0f}s")
    if out.export_path is not None:
        click.echo(f"export written to {out.export_path}")
    else:
        click.echo("no --output given: nothing was written")


@click.command()
@click.argument("model")
@click.option("--plan", "plan_path", required=True, type=click.Path(),
              help="An export directory (plan.json and amoeba_patch/) or a plan.json.")
@click.option("--ignore-patch", is_flag=True,
              help="Apply the plan to the unchanged weights even though its method changed some.")
@export_options(required=True)
def export(model, plan_path, ignore_patch, output, exporter, export_dtype, overwrite):
    """Apply a plan to MODEL and export the result."""
    from ..export import check_destination
    from ..export.patch import load_plan
    from ..plugins import get

    plan, patch = load_plan(plan_path, ignore_patch)
    get("exporters", exporter)
    check_destination(output, overwrite)
    loaded, tokenizer = load(model)
    from ..anatomy import anatomy_of
    from ..export import ExportRequest
    from ..export import export as run_export

    anatomy = anatomy_of(loaded)
    plan.validate(anatomy)
    request = ExportRequest(model=loaded, anatomy=anatomy, plan=plan, tokenizer=tokenizer, patch=patch,
                            dtype=export_dtype, info={"source_model": model, "plan": str(plan_path), **plan.provenance})
    with status(f"exporting with '{exporter}'"):
        path = run_export(exporter, request, output, overwrite)
    for line in parameter_lines(anatomy, plan):
        click.echo(line)
    click.echo(f"export written to {path}")


__all__ = ["export", "prune"]
