"""``amoeba eval MODEL``: the perplexity protocol (optionally with a plan applied), or lm-eval tasks."""
from __future__ import annotations

import json

import click

from ..errors import AmoebaError
from .common import load, parameter_lines, status
from .options import echo_table, evaluation_options

#: the flags `amoeba eval` had before they were named as in PruningConfig, still accepted
_OLD_NAMES = {"evaluation": ("--source", "--eval-source"), "evaluation_windows": ("--windows", "--eval-windows"),
              "evaluation_seq_len": ("--seq-len",)}


@click.command(name="eval")
@click.argument("model")
@click.option("--plan", "plan_path", type=click.Path(), default=None,
              help="Also evaluate MODEL with this plan applied (softly, by masks), with the patch beside it.")
@click.option("--ignore-patch", is_flag=True,
              help="Apply --plan to the unchanged weights even though its method changed some.")
@evaluation_options(toggle=False, aliases=_OLD_NAMES)
@click.option("--tasks", "-t", default=None, metavar="T1,T2",
              help="Run these lm-eval tasks instead of the perplexity protocol (see `amoeba tasks`; needs lm-eval).")
@click.option("--limit", default=None, type=float, help="lm-eval: documents per task (a count, or a fraction < 1).")
@click.option("--num-fewshot", default=None, type=int, help="lm-eval: few-shot examples per prompt.")
@click.option("--batch-size", default="16", show_default=True, help="lm-eval: batch size (an int or auto).")
@click.option("--seed", default=None, type=int, help="lm-eval: one seed for python/numpy/torch/few-shot sampling.")
@click.option("--include-path", "include_path", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="lm-eval: another folder of task YAMLs (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="lm-eval: print the results as JSON.")
def eval_(model, plan_path, ignore_patch, evaluation, evaluation_windows, evaluation_seq_len,
          allow_calibration_overlap, tasks, limit, num_fewshot, batch_size, seed, include_path, as_json):
    """Perplexity of MODEL (and of MODEL with --plan applied), or lm-eval --tasks.

    Without --tasks: the papers' perplexity protocol on --evaluation. With --tasks: lm-evaluation-harness
    in process, one row per task and metric, e.g. `amoeba eval amoeba-tiny-sotu --tasks
    amoeba_sotu_ppl,amoeba_sotu_cloze --limit 20`.
    """
    if tasks is not None:
        return _eval_tasks(model, plan_path, ignore_patch, tasks, limit, num_fewshot, batch_size, seed, include_path,
                           as_json)
    from ..data import check_unseen, resolve_source
    from ..pipeline import recorded_texts

    source = evaluation
    resolve_source(source)
    plan = patch = None
    if plan_path:
        from ..export.patch import load_plan

        plan, patch = load_plan(plan_path, ignore_patch)
    # the text the model (an export) or the plan calibrated or trained on is refused
    check_unseen(recorded_texts(plan=plan, export=model), source, allow_calibration_overlap)
    loaded, tokenizer = load(model)
    if tokenizer is None:
        raise AmoebaError(f"{model} has no tokenizer", "save a tokenizer next to the model")
    from ..anatomy import anatomy_of
    from ..eval import perplexity

    anatomy = anatomy_of(loaded)
    if plan is not None:
        plan.validate(anatomy)
    before = perplexity(loaded, tokenizer, source=source, seq_len=evaluation_seq_len, max_windows=evaluation_windows)
    click.echo(f"perplexity ({source}): {before:.3f}")
    if plan is not None:
        from ..surgery import apply_soft

        with apply_soft(loaded, anatomy, plan, patch):
            after = perplexity(loaded, tokenizer, source=source, seq_len=evaluation_seq_len,
                               max_windows=evaluation_windows)
        click.echo(f"with plan:   {after:.3f}")
        for line in parameter_lines(anatomy, plan):
            click.echo(line)


def _eval_tasks(model, plan_path, ignore_patch, tasks, limit, num_fewshot, batch_size, seed, include_path, as_json):
    """``amoeba eval --tasks``: the ``lm-eval`` evaluator in process."""
    from ..eval.lm_eval import format_rows, parse_tasks, task_manager
    from ..plugins import get

    names = parse_tasks(tasks)
    if not names:
        raise AmoebaError("--tasks names no task", "pass e.g. --tasks amoeba_sotu_ppl,amoeba_sotu_cloze")
    if limit is not None and limit >= 1:
        if limit != int(limit):
            raise AmoebaError(f"--limit {limit} is neither a count nor a fraction below 1", "pass e.g. --limit 20")
        limit = int(limit)
    batch = batch_size if str(batch_size).startswith("auto") else _positive_int(batch_size, "--batch-size")
    evaluator = get("evaluators", "lm-eval")
    with status("indexing lm-eval tasks"):
        task_manager(names, list(include_path))  # unknown names fail here, before the model loads
    plan = patch = None
    if plan_path:
        from ..export.patch import load_plan

        plan, patch = load_plan(plan_path, ignore_patch)
    loaded, tokenizer = load(model)
    if tokenizer is None:
        raise AmoebaError(f"{model} has no tokenizer", "save a tokenizer next to the model")
    options = {"tasks": names, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch, "seed": seed,
               "include_path": list(include_path)}
    with status(f"lm-eval {', '.join(names)}"):
        result = evaluator.evaluate(loaded, tokenizer, **options)
    after = None
    if plan is not None:
        from ..anatomy import anatomy_of
        from ..surgery import apply_soft

        anatomy = anatomy_of(loaded)
        plan.validate(anatomy)
        with apply_soft(loaded, anatomy, plan, patch), status(f"lm-eval {', '.join(names)} with the plan"):
            after = evaluator.evaluate(loaded, tokenizer, **options)
    if as_json:
        keep = ("results", "groups", "stderr", "tasks", "config", "n_samples", "versions")
        data = {k: result[k] for k in keep}
        if after is not None:
            data["with_plan"] = {k: after[k] for k in keep}
        click.echo(json.dumps(data, indent=1, default=str))
        return
    rows = format_rows(result["rows"])
    if after is None:
        echo_table(rows, ["task", "metric", "value", "stderr"])
    else:
        planned = {(r[0], r[1]): r[2] for r in format_rows(after["rows"])}
        echo_table([[r[0], r[1], r[2], planned.get((r[0], r[1]), "-")] for r in rows],
                   ["task", "metric", "model", "with plan"])
        for line in parameter_lines(anatomy, plan):
            click.echo(line)
    shown = {t: n.get("effective") for t, n in result["n_samples"].items()}
    if shown:
        click.echo("documents: " + ", ".join(f"{t} {n}" for t, n in shown.items()))


def _positive_int(value, flag: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise AmoebaError(f"{flag} {value} is not a positive integer", f"pass e.g. {flag} 16 (or auto)")
    return number


__all__ = ["eval_"]
