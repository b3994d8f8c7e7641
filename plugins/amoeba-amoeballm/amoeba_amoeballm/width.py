"""Width: importance-ranked KV groups / heads and MLP channels, one nested mask per width ratio.

AmoebaLLM ports FLAP (section 2.2 of the research notes): WIFV fluctuation scores standardised per
layer, one global ranking across layers and modules, bias compensation for what is removed. Here
the scores come from the shared metrics, the ranking is at KV-group granularity (never a hard-coded
head size, so GQA models work), the ratio is the fraction of decoder-linear parameters kept, and
width 1.0 is exactly the full model (the official threshold rule still pruned one structure there).
``allocation="uniform"`` keeps the same heads per group and MLP width in every layer instead, for
users who need a stock Hugging Face export.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from amoeba_plugin.budget import Budget
from amoeba_plugin.calibration import SITES, collect_statistics
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import Plan
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import (
    global_width,
    standardized_unit_scores,
    uniform_plan,
    uniform_width,
)
from amoeba_plugin.pruning.compensation import output_bias_compensation
from amoeba_plugin.cost import CostModel

ALLOCATIONS = ("global", "uniform")


def check_widths(widths: Sequence[float]) -> list[float]:
    """Widths as floats, descending, starting at 1.0 (the largest subnet is the full width)."""
    try:
        out = [float(w) for w in widths]
    except (TypeError, ValueError):
        raise AmoebaError(f"widths must be numbers, got {widths!r}", "pass e.g. 1,0.875,0.75,0.625") from None
    if not out or out[0] != 1.0 or any(not 0 < w <= 1 for w in out) or out != sorted(set(out), reverse=True):
        raise AmoebaError(f"widths must start at 1.0 and strictly decrease inside (0, 1], got {out}",
                          "pass e.g. 1,0.875,0.75,0.625 (the official list)")
    return out


def linear_parameters(anatomy) -> int:
    """Parameters of the decoder's attention and MLP linears, biases included (what a width ratio is a
    fraction of): the host's count without embeddings and norms."""
    return CostModel(anatomy, embeddings=False, norms=False).full


def width_budget(anatomy, width: float) -> Budget:
    """The parameter-count budget that keeps ``width`` of the decoder-linear parameters."""
    full = CostModel(anatomy).full
    return Budget("count", max(1, int(full - (1 - width) * linear_parameters(anatomy))))


@dataclass
class WidthRanking:
    """What the width masks are cut from: the calibration statistics (for bias compensation), and
    either the standardised KV-group and MLP-channel scores of the global ranking or the per-layer
    query-head and MLP-channel scores of the uniform allocation. Held in memory, never saved."""

    allocation: str
    stats: object
    groups: list | None = None
    channels: list | None = None
    unit_scores: dict | None = None
    bias_compensation: bool = True

    def plan(self, anatomy, budget: Budget, depth=None, method: str = "amoeballm") -> Plan:
        """The widest plan of the layers ``depth`` (indices; None: all) that fits ``budget``: the ranking
        cut at one unit's precision (a budget filled to within one MLP channel) instead of a width ratio."""
        if self.allocation == "global":
            return global_width(anatomy, budget, self.groups, self.channels, method,
                                output_bias=self.bias_compensation, depth=depth, top_up=True)
        heads, mlp = uniform_width(anatomy, budget, method, depth=depth)
        plan = uniform_plan(anatomy, heads, mlp, self.unit_scores["query_head"], self.unit_scores["mlp_channel"],
                            depth=depth)
        plan.output_bias = self.bias_compensation
        return plan

    def patch(self, model, anatomy, plan: Plan) -> dict[str, torch.Tensor]:
        """The compensation biases of ``plan`` (empty without compensation)."""
        return output_bias_compensation(model, anatomy, plan, self.stats) if plan.output_bias else {}


def width_ranking(model, anatomy, windows, *, allocation: str = "global", metric: str = "fluctuation",
                  bias_compensation: bool = True, batch_size: int = 8) -> WidthRanking:
    """Score the width units once, from one calibration pass (see :class:`WidthRanking`)."""
    if allocation not in ALLOCATIONS:
        raise AmoebaError(f"unknown width allocation '{allocation}'", f"use one of: {', '.join(ALLOCATIONS)}")
    scorer = get("metrics", metric)
    if not hasattr(scorer, "role_scores"):
        raise AmoebaError(f"metric '{metric}' does not score single linears",
                          "use a linear metric: fluctuation, wanda-sp, magnitude, obs or taylor")
    stats = collect_statistics(model, anatomy, windows, sites=SITES, batch_size=batch_size)
    wanted = scorer.needs_statistics
    shared = bool(wanted) and stats.has(gram="gram" in wanted, sites=tuple(wanted - {"gram"}))
    calibration = (stats if shared else windows) if scorer.needs_calibration else None
    if allocation == "global":
        groups, channels = standardized_unit_scores(anatomy, scorer.role_scores(model, anatomy, calibration))
        return WidthRanking(allocation, stats, groups, channels, bias_compensation=bias_compensation)
    scores = scorer.score_units(model, anatomy, ("query_head", "mlp_channel"), calibration)
    return WidthRanking(allocation, stats, unit_scores=scores, bias_compensation=bias_compensation)


def select_widths(model, anatomy, windows, widths: Sequence[float], *, allocation: str = "global",
                  metric: str = "fluctuation", bias_compensation: bool = True, batch_size: int = 8,
                  ranking: WidthRanking | None = None
                  ) -> tuple[dict[float, Plan], dict[float, dict[str, torch.Tensor]]]:
    """Full-depth plans and compensation biases for every width, from one calibration pass.

    Returns ``(plans, biases)``: ``plans[w]`` keeps the best-scored units at width ``w`` (nested:
    every plan's units contain the next smaller width's), ``biases[w]`` maps ``"<o|down>.bias"``
    names to FLAP's compensation vectors (empty at width 1.0 or without compensation). ``ranking``
    (from :func:`width_ranking` with the same settings) saves the calibration pass."""
    widths = check_widths(widths)
    if ranking is None:
        ranking = width_ranking(model, anatomy, windows, allocation=allocation, metric=metric,
                                bias_compensation=bias_compensation, batch_size=batch_size)
    plans: dict[float, Plan] = {}
    if allocation == "global":
        for w in widths:
            plans[w] = (Plan.full(anatomy) if w == 1.0 else
                        global_width(anatomy, width_budget(anatomy, w), ranking.groups, ranking.channels,
                                     "amoeballm", output_bias=bias_compensation))
    else:
        scores = ranking.unit_scores
        last = None
        for w in widths:
            if w == 1.0:
                plans[w] = Plan.full(anatomy)
                continue
            heads, mlp = uniform_width(anatomy, width_budget(anatomy, w), "amoeballm")
            if last is not None:  # nested: a smaller width never keeps more than a larger one
                heads, mlp = min(heads, last[0]), min(mlp, last[1])
            last = (heads, mlp)
            plans[w] = uniform_plan(anatomy, heads, mlp, scores["query_head"], scores["mlp_channel"])
            plans[w].output_bias = bias_compensation
    biases = {w: (output_bias_compensation(model, anatomy, plans[w], ranking.stats) if bias_compensation and w < 1
                  else {}) for w in widths}
    for w, plan in plans.items():
        plan.provenance = {"method": "amoeballm", "width": w, "allocation": allocation, "metric": metric,
                           "bias_compensation": bias_compensation and w < 1}
    return plans, biases


def is_nested(larger: Plan, smaller: Plan, anatomy) -> bool:
    """True when every unit ``smaller`` keeps is also kept by ``larger`` (weight sharing needs it)."""
    big = {lp.index: lp for lp in larger.resolved(anatomy).layers}
    for lp in smaller.resolved(anatomy).layers:
        other = big.get(lp.index)
        if other is None or not set(lp.mlp_channels) <= set(other.mlp_channels):
            return False
        heads = {(g, q) for g, qs in zip(lp.kv_groups, lp.query_heads) for q in qs}
        if not heads <= {(g, q) for g, qs in zip(other.kv_groups, other.query_heads) for q in qs}:
            return False
    return True


__all__ = ["ALLOCATIONS", "WidthRanking", "check_widths", "is_nested", "linear_parameters", "select_widths",
           "width_budget", "width_ranking"]
