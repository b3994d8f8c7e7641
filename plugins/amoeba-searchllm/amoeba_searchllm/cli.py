"""``amoeba searchllm run|show``, added through ``amoeba_register_commands``: thin layers over
:class:`amoeba_plugin.api.AmoebaPruner` with the ``searchllm`` method, and over the search log."""
from __future__ import annotations

import json
from pathlib import Path

import click

from amoeba_plugin.errors import AmoebaError

from .method import REFORMATIONS
from .operators import DEPTH_RULES, MASK_MODES
from .search import LOG, PLOT, PRESETS, STATE


@click.group("searchllm")
def searchllm():
    """Search for Efficient LLMs: OBS init, evolutionary mask search under a budget, reformation."""


@searchllm.command()
@click.argument("model")
@click.option("--budget", "-b", default="0.5", show_default=True,
              help="params=0.5 (all parameters), nonembed=0.5 (blocks only), count=3e6 or macs=0.5.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, help="Export directory.")
@click.option("--work", "-w", type=click.Path(file_okay=False), default=None,
              help="Search directory: log, checkpoint, progress plot; rerun the same command to resume.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True,
              help="Population settings (paper: 100 per generation, top 10, 50 generations).")
@click.option("--generations", type=int, default=None, help="Override the preset's generations.")
@click.option("--population", type=int, default=None, help="Override the preset's population.")
@click.option("--fitness", default="perplexity", show_default=True, help="perplexity, loss or lm-eval:TASK.")
@click.option("--fitness-windows", type=int, default=8, show_default=True,
              help="Calibration windows kept aside to score candidates.")
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="How far below the budget a candidate may land (fraction of the budget).")
@click.option("--mask-mutation", type=click.Choice(MASK_MODES), default="constructive",
              show_default=True)
@click.option("--depth-rule", type=click.Choice(DEPTH_RULES), default="influence",
              show_default=True, help="Which layer a depth mutation removes.")
@click.option("--reformation", type=click.Choice(REFORMATIONS), default="exact", show_default=True)
@click.option("--calibration", default="sotu:train", show_default=True, help="Calibration text source.")
@click.option("--samples", default=136, show_default=True, type=int,
              help="Calibration windows, fitness ones included (the paper reforms on 128; fewer overfit the refit).")
@click.option("--seq-len", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True,
              help="Held-out perplexity before and after.")
@click.option("--eval-source", default="sotu:validation", show_default=True)
@click.option("--restart", is_flag=True, help="Delete the checkpoint in --work and start again.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --output directory.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Any other searchllm option (repeatable; JSON values), e.g. attention_range=0.6,1.")
def run(model, budget, output, work, preset, generations, population, fitness, fitness_windows, tolerance,
        mask_mutation, depth_rule, reformation, calibration, samples, seq_len, seed, evaluate, eval_source,
        restart, overwrite, options):
    """Initialise, search and reform MODEL under BUDGET; export with --output."""
    from amoeba_plugin.api import AmoebaPruner, PruningConfig, preflight
    from amoeba_plugin.models import load_model

    from amoeba_plugin.cli.main import parse_options

    extra = parse_options(options)
    method_options = {"preset": preset, "generations": generations, "population": population, "fitness": fitness,
                      "fitness_windows": fitness_windows, "tolerance": tolerance, "mask_mutation": mask_mutation,
                      "depth_rule": depth_rule, "reformation": reformation, "checkpoint_dir": work,
                      "restart": restart, **extra}
    config = PruningConfig(method="searchllm", budget=budget, calibration=calibration, calibration_samples=samples,
                           calibration_seq_len=seq_len, seed=seed, evaluation=eval_source,
                           method_options={k: v for k, v in method_options.items() if v is not None})
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
        click.echo(f"perplexity ({eval_source}): {out.perplexity_before:.3f} -> {out.perplexity_after:.3f}")
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
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if as_json:
        for line in lines:
            click.echo(json.dumps(line))
        return
    keys = ["generation", "evaluated", "duplicates", "out_of_budget", "best", "best_cost_ratio", "seconds",
            "evaluations_per_second"]
    rows = [[f"{g[k]:.4f}" if isinstance(g[k], float) and k == "best" else str(g[k]) for k in keys] for g in lines]
    widths = [max(len(k), *(len(r[i]) for r in rows)) for i, k in enumerate(keys)]
    click.echo("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    state = Path(work) / STATE
    planned = json.loads(state.read_text()).get("generations") if state.exists() else None
    last = lines[-1]["generation"] if lines else -1
    done = "finished" if planned is not None and last >= planned else f"checkpoint after generation {last} of {planned}"
    click.echo(f"{len(lines)} generations ({done}); plot: {Path(work) / PLOT}")
