"""Salient-weight inheritance: the subnet the search starts from (the paper's §3.2, Eq. 1–3).

Every linear's weights are scored by the OBS saliency ``W_ij² / [(2XXᵀ)⁻¹]_jj`` (the shared ``obs``
metric), summed into rows (q, k, v, gate, up) or columns (o, down), then over the linears that share
a mask: a KV group's pair scores add its K and V rows and the q rows and o columns of all its query
heads, both channels of each RoPE pair; an MLP channel adds its gate and up rows and its down column.
One uniform inheriting ratio, solved from the budget, keeps the top pairs of every group and the top
channels of every layer at full depth. (Eq. 2–3 read "min ‖S ⊙ scores‖" with S = 1 for kept; the text
means keeping the *largest* scores, which is what is done here.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from amoeba_plugin.errors import InvalidBudgetError
from amoeba_plugin.plugins import get

from .genome import Candidate
from .space import CostModel, SearchSpace, preset_ranges


@dataclass
class Saliency:
    """Scores of the search's units: ``attention[l]`` is ``[groups, pairs]``, ``mlp[l]`` is ``[channels]``;
    ``influence[l]`` is the layer's block influence (how much it changes its input)."""

    attention: list[np.ndarray]
    mlp: list[np.ndarray]
    influence: np.ndarray


def unit_saliency(model, anatomy, windows, *, damping: float = 0.01, batch_size: int = 8) -> Saliency:
    """OBS saliency of every pair and MLP channel, and each layer's block influence, on ``windows``
    (calibration windows, or dense-model statistics with Gram matrices on every site, collected once
    and shared with the warm start and the fitness proxy)."""
    roles = get("metrics", "obs").role_scores(model, anatomy, windows, damping=damping, batch_size=batch_size)
    attention, mlp = [], []
    for layer, r in zip(anatomy.layers, roles):
        g, qpg, hd = layer.num_kv_groups, layer.queries_per_group, layer.head_dim
        heads = (r["q"] + r["o"]).double().reshape(g, qpg, hd).sum(1) + (r["k"] + r["v"]).double().reshape(g, hd)
        attention.append((heads[:, : hd // 2] + heads[:, hd // 2:]).numpy())
        mlp.append((r["gate"] + r["up"] + r["down"]).double().numpy())
    influence = get("metrics", "block-influence").score(model, anatomy, "layer", windows, batch_size=batch_size)
    return Saliency(attention, mlp, influence.double().numpy())


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Mask of the ``keep`` largest scores (ties broken by the lower index, so the result is stable)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:keep]] = True
    return mask


def _counts(space: SearchSpace, ratio: float) -> tuple[int, int]:
    u = space.layers[0]
    pairs = u.pairs if not space.attention_searchable else min(u.pairs, max(1, round(ratio * u.pairs)))
    return pairs, min(u.channels, max(1, round(ratio * u.channels)))


def uniform_ratio(space: SearchSpace, cost: CostModel) -> tuple[float, int, int]:
    """The largest uniform inheriting ratio whose full-depth subnet fits the budget, and the kept pairs
    per group and MLP channels per layer it gives; the MLP then takes up what the rounding of the
    pairs left below the ceiling (one more uniform MLP count at most)."""
    layers = list(range(space.num_layers))

    def cost_of(pairs: int, channels: int) -> float:
        return cost.cost(layers, [[pairs] * u.groups for u in space.layers], [channels] * space.num_layers)

    if cost_of(*_counts(space, 0.0)) > cost.target:
        raise InvalidBudgetError(
            f"the budget ({cost.budget}) is below what the smallest full-depth subnet costs "
            f"({cost_of(*_counts(space, 0.0)):,.0f} of {cost.target:,.0f})",
            "raise the budget: the search starts from all layers and removes depth only while searching")
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cost_of(*_counts(space, mid)) <= cost.target else (low, mid)
    pairs, channels = _counts(space, low)
    top = space.layers[0].channels
    lo, hi = channels, top
    while lo < hi:  # the largest uniform MLP count that still fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost_of(pairs, mid) <= cost.target else (lo, mid - 1)
    return low, pairs, lo


def initial_candidate(space: SearchSpace, saliency: Saliency, pairs: int, channels: int) -> Candidate:
    """Full depth; the top ``pairs`` of every KV group and the top ``channels`` of every MLP."""
    c = Candidate.full(space)
    for layer in range(space.num_layers):
        if space.attention_searchable:
            c.attention[layer] = [_top(s, pairs) for s in saliency.attention[layer]]
        c.mlp[layer] = _top(saliency.mlp[layer], channels)
    return c


@dataclass
class Start:
    """Everything the search starts from: its space and cost model, the saliency, the start subnet and
    the uniform ratio (with the pairs per group and MLP channels per layer) it was built with."""

    space: SearchSpace
    cost: CostModel
    saliency: Saliency
    candidate: Candidate
    ratio: float
    pairs: int
    channels: int


def budget_space(anatomy, budget, *, attention_range=None, mlp_range=None, min_depth: int | None = None,
                 keep_last: int = 1, mlp_multiple: int = 1, output_bias: bool = False) -> tuple[SearchSpace, CostModel, float, int, int]:
    """The search space for ``budget`` (Table 1's row for its uniform ratio unless ranges are given),
    its cost model, and the uniform ratio with the pairs per group and MLP channels it keeps. No data
    is needed: a saved candidate can be read back with this space alone."""
    cost = CostModel(anatomy, budget, output_bias=output_bias)
    whole = SearchSpace.build(anatomy, (1.0, 1.0), (1.0, 1.0), anatomy.num_layers)  # units only
    ratio, pairs, channels = uniform_ratio(whole, cost)
    table = preset_ranges(ratio)
    space = SearchSpace.build(anatomy, attention_range or table["attention"], mlp_range or table["mlp"],
                              min_depth or max(1, round(table["depth"] * anatomy.num_layers)),
                              keep_last=keep_last, mlp_multiple=mlp_multiple)
    return space, cost, ratio, pairs, channels


def dense_statistics(model, anatomy, windows: torch.Tensor, *, batch_size: int = 8):
    """One pass over ``windows`` on the dense model: input statistics with Gram matrices of every
    site (what the OBS saliency, FLAP's fluctuation, the block influence and the fitness proxy read)."""
    from amoeba_plugin.calibration import SITES, collect_statistics

    return collect_statistics(model, anatomy, windows, gram=True, sites=SITES, batch_size=batch_size)


def prepare_start(model, anatomy, windows, budget, *, damping: float = 0.01, batch_size: int = 8,
                  output_bias: bool = False, **space_options) -> Start:
    """The space (:func:`budget_space`), the saliency on ``windows`` (windows or dense statistics),
    and the start subnet."""
    space, cost, ratio, pairs, channels = budget_space(anatomy, budget, output_bias=output_bias, **space_options)
    saliency = unit_saliency(model, anatomy, windows, damping=damping, batch_size=batch_size)
    return Start(space, cost, saliency, initial_candidate(space, saliency, pairs, channels), ratio, pairs, channels)


__all__ = ["Saliency", "Start", "budget_space", "dense_statistics", "initial_candidate", "prepare_start", "uniform_ratio",
           "unit_saliency"]
