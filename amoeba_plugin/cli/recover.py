"""``amoeba recover PRUNED --teacher SOURCE --tokens N -o OUT``: heal a pruned model by training it."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import load, status
from .options import export_options, flag, option_pairs, parse_options


def _recorded_source(pruned: str) -> str | None:
    """The source model an export directory records (``amoeba_export.json``), if any."""
    from ..export.writers import EXPORT_INFO

    path = Path(pruned) / EXPORT_INFO
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return None
    source = data.get("source_model") or (data.get("info") or {}).get("source_model")
    return source if isinstance(source, str) else None


@click.command()
@click.argument("pruned")
@flag("--teacher", "teacher", default=None,
      help="The model PRUNED was pruned from: the distillation teacher (default: the source model its "
           "amoeba_export.json records). Not needed with --option loss=lm.")
@flag("--tokens", "tokens", type=int, required=True, help="Training tokens.")
@option_pairs(help="Recovery option (repeatable), e.g. loss=lm, lr=1e-4, lora_rank=8, source=sotu:train, "
                   "eval_every=8192; see docs/recovery.md.")
@flag("--run-dir", "run_dir", type=click.Path(file_okay=False), default=None,
      help="Checkpoint here; run the same command again to resume after an interruption.")
@export_options(required=True, exporter=False, help="Directory for the healed model (written atomically).")
def recover(pruned, teacher, tokens, options, run_dir, output, overwrite):
    """Heal PRUNED (an export of `amoeba prune`, or any causal LM) by distillation from --teacher."""
    from ..errors import AmoebaError
    from ..export import check_destination
    from ..recovery import recover as run_recovery
    from ..recovery import save_recovered
    from ..recovery.config import coerce
    from ..recovery.loop import check_text

    config = coerce({**parse_options(options), "tokens": tokens})
    check_text(config)  # the training and held-out text resolve, and do not overlap: before loading
    check_destination(output, overwrite)
    if config.needs_teacher and teacher is None:
        teacher = _recorded_source(pruned)
        if teacher is None:
            raise AmoebaError(f"loss={config.loss} needs a teacher and {pruned} records no source model",
                              "pass --teacher SOURCE (the model it was pruned from), or --option loss=lm")
    student, tokenizer = load(pruned)
    if tokenizer is None:
        raise AmoebaError(f"{pruned} has no tokenizer", "save the tokenizer next to the pruned model")
    source = None
    if config.needs_teacher:
        source, _ = load(teacher)
    result = run_recovery(student, source, tokenizer, config, run_dir=run_dir,
                          progress=None if not click.get_current_context().find_root().params.get("quiet") else False)
    record = result.record(teacher=teacher if config.needs_teacher else None)
    with status(f"writing {output}"):
        path = save_recovered(result.model, tokenizer, output, record, base=pruned, overwrite=overwrite)
    held = result.heldout
    click.echo(f"recovered:      {result.tokens:,} tokens of {config.source} with loss={config.loss} "
               f"in {result.wall_s:.0f}s" + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""))
    if len(held) >= 2:
        click.echo(f"held-out perplexity ({config.eval_source}): {held[0]['heldout_ppl']:.3f} -> "
                   f"{held[-1]['heldout_ppl']:.3f}")
    click.echo(f"model written to {path}")


__all__ = ["recover"]
