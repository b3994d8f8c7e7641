"""Stage 1, knowledge-preserving subnet selection: the DP depth table plus the nested width masks."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.options import MethodOptions, option

from .depth import dp_layer_selection
from .scorers import build_scorer, check_spec
from .shapes import SelectionTable
from .width import ALLOCATIONS, check_widths, select_widths, width_ranking

#: the official width list with 1/2 added, so half-size subnets exist at every depth
DEFAULT_WIDTHS = (1.0, 0.875, 0.75, 0.625, 0.5)


def parse_fraction(text: str) -> float:
    """``"0.75"`` or ``"3/4"`` (the official CLI wrote widths as fractions)."""
    num, sep, den = text.strip().partition("/")
    return float(num) / float(den) if sep else float(num)


def parse_widths(text: str) -> tuple[float, ...]:
    """``"1,0.875,0.75"`` or ``"1,7/8,3/4"`` as floats."""
    try:
        return tuple(parse_fraction(p) for p in text.split(",") if p.strip())
    except (ValueError, ZeroDivisionError):
        raise AmoebaError(f"cannot read the width list '{text}'", "write e.g. 1,0.875,0.75,0.625 or 1,7/8,3/4") from None


@dataclass
class SelectionConfig(MethodOptions):
    """Stage 1 settings, and the options of the ``amoeballm`` method (official defaults in brackets)."""

    min_layers: int | None = option(None, "smallest depth; default half the layers [20 of 32]", ge=1)
    keep_last: int = option(1, "last layers the DP never removes [1]", ge=0)
    depth_scorer: str = option("loss", "knowledge-preservation score: loss, perplexity or lm-eval:TASK "
                                       "(e.g. lm-eval:amoeba_sotu_cloze_calib) [5-shot MMLU accuracy]")
    scorer_options: dict = option({}, "options of the depth scorer, e.g. {\"num_questions\": 64} for lm-eval")
    widths: tuple[float, ...] = option(DEFAULT_WIDTHS, "width ratios, largest first (1,0.875,... or 1,7/8,...) "
                                                       "[1, 7/8, 3/4, 5/8]", parse=parse_widths)
    allocation: str = option("global", "global: FLAP per-layer widths; uniform: the same width in every layer "
                                       "(stock HF exports)", choices=ALLOCATIONS)
    width_metric: str = option("fluctuation", "metric ranking the width channels", registry="metrics")
    bias_compensation: bool = option(True, "fold the mean contribution of removed channels into output biases")

    def __post_init__(self):
        """Everything that can be checked before a model is loaded."""
        super().__post_init__()
        self.widths = tuple(check_widths(self.widths))
        self.depth_scorer = check_spec(self.depth_scorer)
        if self.depth_scorer.startswith("lm-eval:"):  # an unknown task fails here, before the model loads
            from amoeba_plugin.eval.scorers import check_spec_task

            check_spec_task(self.depth_scorer, "depth scorer", (self.scorer_options or {}).get("include_path"))

    def resolved_min_layers(self, num_layers: int) -> int:
        value = self.min_layers if self.min_layers is not None else max(self.keep_last, math.ceil(num_layers / 2))
        if not self.keep_last <= value <= num_layers:
            raise AmoebaError(f"min_layers {value} must lie between keep_last ({self.keep_last}) and the model's "
                              f"{num_layers} layers", f"pass --min-layers between {self.keep_last} and {num_layers}")
        return value

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


def run_selection(model, tokenizer, anatomy, windows, config: SelectionConfig, seed: int = 0,
                  show_progress: bool = True, depth_windows=None) -> tuple[SelectionTable, dict]:
    """Depth by the DP (scored by ``config.depth_scorer`` on ``depth_windows``, by default ``windows``,
    or an lm-eval task), width by fluctuation scores on ``windows``. Returns the table (its
    ``ranking`` kept in memory) and a report (evaluations, times)."""
    widths = list(config.widths)  # checked by SelectionConfig
    min_layers = config.resolved_min_layers(anatomy.num_layers)
    scored = windows if depth_windows is None else depth_windows
    scorer = build_scorer(config.depth_scorer, model, tokenizer, anatomy, scored, seed, **config.scorer_options)
    began = time.perf_counter()
    depth = dp_layer_selection(anatomy.num_layers, lambda kept: scorer(model, anatomy, kept), min_layers=min_layers,
                               keep_last=config.keep_last, higher_is_better=scorer.higher_is_better,
                               show_progress=show_progress)
    depth.scorer = scorer.describe()
    depth_seconds = time.perf_counter() - began
    began = time.perf_counter()
    ranking = width_ranking(model, anatomy, windows, allocation=config.allocation, metric=config.width_metric,
                            bias_compensation=config.bias_compensation)
    plans, biases = select_widths(model, anatomy, windows, widths, allocation=config.allocation,
                                  metric=config.width_metric, bias_compensation=config.bias_compensation,
                                  ranking=ranking)
    table = SelectionTable(depth, widths, plans, biases, config.allocation, ranking=ranking)
    times = depth.eval_seconds
    report = {"config": config.to_dict(), "min_layers": min_layers, "dp_evaluations": depth.evaluations,
              "dp_seconds": round(depth_seconds, 2),
              "seconds_per_evaluation": round(sum(times) / len(times), 4) if times else None,
              "width_seconds": round(time.perf_counter() - began, 2), "calibration_windows": int(len(windows)),
              "depth_windows": [int(s) for s in scored.shape] if hasattr(scored, "shape") else None,
              "calibration_seq_len": int(windows.shape[1]), "seed": seed}
    return table, report


__all__ = ["DEFAULT_WIDTHS", "SelectionConfig", "parse_fraction", "parse_widths", "run_selection"]
