"""``amoeba searchllm run|show``, added through ``amoeba_register_commands``: thin layers over
:class:`amoeba_plugin.api.AmoebaPruner` with the ``searchllm`` method, and over the search log."""
from __future__ import annotations

import json
from pathlib import Path

import click

from amoeba_plugin.cli.options import (calibration_options, echo_table, evaluation_options, export_options, flag,
                                       option_flags, option_pairs, parse_options, pruning_defaults, pruning_settings)
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.statefiles import read_jsonl

from .method import SearchLLMOptions
from .search import LOG, PLOT, read_state

#: the options with a flag of their own; the others go through --option KEY=VALUE
FLAGS = ("preset", "generations", "population", "fitness", "fitness_windows", "tolerance", "mask_mutation",
         "depth_rule", "reformation", "checkpoint_dir", "restart")


@click.group("searchllm")
def searchllm():
    """Search for Efficient LLMs: OBS init, evolutionary mask search under a budget, reformation."""


@searchllm.command()
@click.argument("model")
@flag("--budget", "-b", default=pruning_defaults()["budget"], show_default=True,
      help="params=0.5 (all parameters), nonembed=0.5 (blocks only), count=3e6 or macs=0.5.")
@export_options()
@option_flags(SearchLLMOptions, include=FLAGS, into="method_options",
              decls={"checkpoint_dir": ("--work", "-w")}, aliases={"checkpoint_dir": ("--checkpoint-dir",)})
@calibration_options(calibration_samples=132)
@evaluation_options()
@option_pairs(help="Any other searchllm option (repeatable; JSON values), e.g. attention_range=0.6,1 "
                   "(see `amoeba methods searchllm`).")
def run(model, method_options, options, output, overwrite, evaluate, **settings):
    """Initialise, search and reform MODEL under BUDGET; export with --output.

    --work keeps the search log, checkpoint and progress plot: rerun the same command to resume.
    --calibration-samples counts the fitness windows too (132 = the paper's 128 for the refit + 4;
    fewer windows overfit the refit)."""
    from amoeba_plugin.api import AmoebaPruner, PruningConfig, preflight
    from amoeba_plugin.models import load_model

    config = PruningConfig(method="searchllm", **pruning_settings(settings),
                           method_options={**method_options, **parse_options(options)})
    preflight(config, output, overwrite, evaluate)  # every setting, before the model loads
    loaded, tokenizer = load_model(model)
    pruner = AmoebaPruner.from_pretrained(loaded, tokenizer=tokenizer)
    pruner.name = model
    out = pruner.prune(config, save_directory=output, overwrite=overwrite, evaluate=evaluate)
    info = out.info
    best, init = info["best"], info["initial"]
    click.echo(f"budget {info['budget']} ({info['budget_base']}): ceiling {info['target']:,.0f}, "
               f"uniform start ratio {info['uniform_ratio']:.4f}")
    click.echo(f"fitness ({info['fitness'].get('name')}): start {init['fitness']:.4f} -> best {best['fitness']:.4f} "
               f"after {info['generations']} generations, {info['evaluated']} candidates "
               f"({info['search_seconds']:.1f} s, {info.get('evaluations_per_second') or 0:.2f}/s)")
    click.echo(f"kept: {best['depth']} layers, {out.summary['parameters']:,} parameters "
               f"({out.summary['parameters_ratio']:.4f} of all, {out.summary['non_embedding_ratio']:.4f} of blocks)")
    if "reformation" in info:
        errs = info["reformation"]["output_error"].values()
        click.echo(f"reformation ({info['reformation']['solver']}): mean relative output error "
                   f"{sum(e['dropped'] for e in errs) / len(errs):.4f} -> {sum(e['reformed'] for e in errs) / len(errs):.4f}")
    if out.perplexity_before is not None:
        click.echo(f"perplexity ({config.evaluation}): {out.perplexity_before:.3f} -> {out.perplexity_after:.3f}")
    work = config.method_options.get("checkpoint_dir")
    if work:
        click.echo(f"search log in {Path(work) / LOG}")
    click.echo(f"export written to {out.export_path}" if out.export_path else "no --output given: nothing exported")


@searchllm.command()
@click.argument("work", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The log as JSON lines.")
def show(work, as_json):
    """Print the generations of the search in WORK."""
    path = Path(work) / LOG
    if not path.exists():
        raise AmoebaError(f"no search log in {work}", "pass the --work directory of `amoeba searchllm run`")
    fix = "rerun `amoeba searchllm run` with the same --work to rewrite it (or --restart to start over)"
    lines = read_jsonl(path, "search log", fix, torn_tail_ok=True)
    if not lines:
        raise AmoebaError(f"the search log {path} is empty: no generation has finished yet",
                          "wait for the first generation, or rerun `amoeba searchllm run` with the same --work")
    missing = [k for k in ("generation", "evaluated", "best") if any(k not in g for g in lines)]
    if missing:
        raise AmoebaError(f"the search log {path} is damaged (lines without {', '.join(missing)})", fix)
    if as_json:
        for line in lines:
            click.echo(json.dumps(line))
        return
    keys = ["generation", "evaluated", "duplicates", "out_of_budget", "best", "best_cost_ratio", "seconds",
            "evaluations_per_second"]
    echo_table([[f"{g.get(k):.4f}" if isinstance(g.get(k), float) and k == "best" else g.get(k, "")
                 for k in keys] for g in lines], keys)
    state = read_state(work)
    planned = state.get("generations") if state is not None else None
    last = lines[-1]["generation"] if lines else -1
    done = "finished" if planned is not None and last >= planned else f"checkpoint after generation {last} of {planned}"
    click.echo(f"{len(lines)} generations ({done}); plot: {Path(work) / PLOT}")
