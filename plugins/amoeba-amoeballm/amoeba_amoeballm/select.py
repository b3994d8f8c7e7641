"""Stage 1, knowledge-preserving subnet selection: the DP depth table plus the nested width masks."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from amoeba_plugin.errors import AmoebaError

from .depth import dp_layer_selection
from .scorers import build_scorer, check_spec
from .shapes import SelectionTable
from .width import ALLOCATIONS, check_widths, select_widths

#: the official width list with 1/2 added, so half-size subnets exist at every depth
DEFAULT_WIDTHS = (1.0, 0.875, 0.75, 0.625, 0.5)


@dataclass
class SelectionConfig:
    """Stage 1 settings (official defaults in brackets)."""

    min_layers: int | None = None     # smallest depth; default half the layers [20 of 32]
    keep_last: int = 1                # last layers the DP never removes [1]
    depth_scorer: str = "loss"        # loss | perplexity | lm-eval:TASK [5-shot MMLU accuracy]
    scorer_options: dict = field(default_factory=dict)
    widths: tuple[float, ...] = DEFAULT_WIDTHS  # [1, 7/8, 3/4, 5/8]
    allocation: str = "global"        # global (FLAP, per-layer widths) | uniform (stock HF exports)
    width_metric: str = "fluctuation"
    bias_compensation: bool = True

    def __post_init__(self):
        """Everything that can be checked before a model is loaded."""
        self.widths = tuple(check_widths(self.widths))
        self.depth_scorer = check_spec(self.depth_scorer)
        if self.allocation not in ALLOCATIONS:
            raise AmoebaError(f"unknown width allocation '{self.allocation}'", f"use one of: {', '.join(ALLOCATIONS)}")
        if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 0:
            raise AmoebaError(f"keep_last must be a non-negative integer, got {self.keep_last!r}", "pass e.g. --keep-last 1")

    def resolved_min_layers(self, num_layers: int) -> int:
        value = self.min_layers if self.min_layers is not None else max(self.keep_last, math.ceil(num_layers / 2))
        if not self.keep_last <= value <= num_layers:
            raise AmoebaError(f"min_layers {value} must lie between keep_last ({self.keep_last}) and the model's "
                              f"{num_layers} layers", f"pass --min-layers between {self.keep_last} and {num_layers}")
        return value

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


def run_selection(model, tokenizer, anatomy, windows, config: SelectionConfig, seed: int = 0,
                  show_progress: bool = True) -> tuple[SelectionTable, dict]:
    """Depth by the DP (scored by ``config.depth_scorer`` on ``windows`` or an lm-eval task), width
    by fluctuation scores on the same windows. Returns the table and a report (evaluations, times)."""
    widths = list(config.widths)  # checked by SelectionConfig
    min_layers = config.resolved_min_layers(anatomy.num_layers)
    scorer = build_scorer(config.depth_scorer, model, tokenizer, anatomy, windows, seed, **config.scorer_options)
    began = time.perf_counter()
    depth = dp_layer_selection(anatomy.num_layers, lambda kept: scorer(model, anatomy, kept), min_layers=min_layers,
                               keep_last=config.keep_last, higher_is_better=scorer.higher_is_better,
                               show_progress=show_progress)
    depth.scorer = scorer.describe()
    depth_seconds = time.perf_counter() - began
    began = time.perf_counter()
    plans, biases = select_widths(model, anatomy, windows, widths, allocation=config.allocation,
                                  metric=config.width_metric, bias_compensation=config.bias_compensation)
    table = SelectionTable(depth, widths, plans, biases, config.allocation)
    times = depth.eval_seconds
    report = {"config": config.to_dict(), "min_layers": min_layers, "dp_evaluations": depth.evaluations,
              "dp_seconds": round(depth_seconds, 2),
              "seconds_per_evaluation": round(sum(times) / len(times), 4) if times else None,
              "width_seconds": round(time.perf_counter() - began, 2), "calibration_windows": int(len(windows)),
              "calibration_seq_len": int(windows.shape[1]), "seed": seed}
    return table, report


__all__ = ["DEFAULT_WIDTHS", "SelectionConfig", "run_selection"]
