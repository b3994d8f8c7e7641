"""Budget repair: a child outside the budget window is rescaled into it instead of dropped.

The paper drops every child whose size falls outside the target range. On a 30-layer model the
per-gene mutation probabilities move a child's size by more than the 2% window most of the time:
SmolLM2's quick search dropped about 400 children a generation and kept 15-30
(benchmarks/README.md). Repair scales the kept MLP widths of the child's kept layers by one common
factor (all MLPs, as its mutations mostly moved them; attention too when the MLPs alone cannot reach
the window), aiming at the middle of the window, and grows or shrinks each mask by saliency: a
shrinking layer drops its least salient kept units, a growing one takes its most salient free ones.
Layers and groups that keep nothing stay so (removed units are a decision of the genome).
"""
from __future__ import annotations

import numpy as np

from .genome import Candidate
from .space import CostModel, SearchSpace


def _resize(mask: np.ndarray, keep: int, scores: np.ndarray) -> np.ndarray:
    """``mask`` with ``keep`` ones: its least salient kept units dropped, or its most salient free ones added."""
    have = int(mask.sum())
    if keep == have:
        return mask
    out = mask.copy()
    if keep < have:
        kept = np.flatnonzero(mask)
        order = kept[np.lexsort((kept, scores[kept]))]  # least salient first
        out[order[: have - keep]] = False
    else:
        free = np.flatnonzero(~mask)
        order = free[np.lexsort((free, -scores[free]))]  # most salient first
        out[order[: keep - have]] = True
    return out


def _scaled(counts: list[int], factor: float, top: int) -> list[int]:
    return [0 if c == 0 else min(top, max(1, round(c * factor))) for c in counts]


def repair(child: Candidate, space: SearchSpace, cost: CostModel, low: float, high: float,
           attention_scores: list[np.ndarray], mlp_scores: list[np.ndarray]) -> Candidate | None:
    """``child`` rescaled so its cost lies in ``[low, high]`` (``child`` itself when it already does);
    None when no common factor gets it there (its depth alone is over the budget, say)."""
    value = child.cost(cost)
    if low <= value <= high:
        return child
    layers = child.layers
    pairs, channels = child.pair_counts(), child.channel_counts()
    goal = (low + high) / 2
    top_c, top_p = space.layers[0].channels, space.layers[0].pairs

    def cost_of(mlp_factor: float, attn_factor: float) -> float:
        ch = list(channels)
        pa = [list(p) for p in pairs]
        for l in layers:
            ch[l] = _scaled([channels[l]], mlp_factor, top_c)[0]
            if space.attention_searchable:
                pa[l] = _scaled(pairs[l], attn_factor, top_p)
        return cost.cost(layers, pa, ch)

    def solve(scale_attention: bool) -> tuple[float, float] | None:
        lo, hi = 0.0, float(max(top_c, top_p))
        for _ in range(50):  # the cost is non-decreasing in the factor
            mid = (lo + hi) / 2
            c = cost_of(mid, mid if scale_attention else 1.0)
            if c < goal:
                lo = mid
            else:
                hi = mid
        for f in (lo, hi):
            factors = (f, f if scale_attention else 1.0)
            if low <= cost_of(*factors) <= high:
                return factors
        return None

    factors = solve(False) or (solve(True) if space.attention_searchable else None)
    if factors is None:
        return None
    out = child.copy()
    for l in layers:
        keep = _scaled([channels[l]], factors[0], top_c)[0]
        out.mlp[l] = _resize(out.mlp[l], keep, mlp_scores[l])
        if space.attention_searchable and factors[1] != 1.0:
            for g, k in enumerate(_scaled(pairs[l], factors[1], top_p)):
                out.attention[l][g] = _resize(out.attention[l][g], k, attention_scores[l][g])
    return out if low <= out.cost(cost) <= high else None


__all__ = ["repair"]
