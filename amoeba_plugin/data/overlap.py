"""The overlap policy: never evaluate on the text a run calibrated on."""
from __future__ import annotations

from ..errors import DataError
from .specs import TextSpec, resolve_source, spec_of


def check_disjoint(calibration: str | TextSpec | None, evaluation: str | TextSpec | None,
                   allow: bool = False) -> None:
    """Refuse to evaluate on the text a run calibrated on (the same source and split).

    Calibration windows are sampled from the whole split, so any overlap would let pruning decisions
    see the evaluation text and flatter the result. ``allow=True`` lets it pass on purpose.
    """
    if calibration is None or evaluation is None or allow:
        return
    cal_source, cal_split = resolve_source(calibration, purpose="calibration")
    eval_source, eval_split = resolve_source(evaluation, purpose="evaluation")
    if (cal_source.key or cal_source.name) == (eval_source.key or eval_source.name) and cal_split == eval_split:
        held_out = [spec_of(eval_source, s) for s in eval_source.split_names() if eval_source.role(s) != "train"]
        raise DataError(f"the evaluation text '{spec_of(eval_source, eval_split)}' is the calibration text "
                        f"('{calibration}'): the pruning decisions saw it, so its perplexity would flatter the result",
                        f"evaluate on held-out text ({', '.join(held_out) or 'brown, moby-dick or sotu:validation'}), "
                        "or pass --allow-eval-on-calibration (allow_calibration_overlap=True) to do it anyway")


__all__ = ["check_disjoint"]
