"""The search space: what a candidate may keep, and what it costs.

Units follow the paper's masks (Shen et al., NeurIPS 2024, §3.1), adapted to GQA and RoPE so that
the masked model and the sliced one compute the same function:

* attention: per layer and per KV group, a mask over the head's RoPE *pairs* (channel ``j`` with
  ``j + head_dim/2``), shared by the group's K/V head and all its query heads (Q, K, V rows and O
  columns: the paper's mask sharing). For MHA a group is a head, so this is the paper's per-head ratio;
* MLP: per layer, a mask over the intermediate channels (gate/up rows and down columns);
* depth: which layers are kept.

The hidden size, embeddings and LM head are never pruned. A candidate's parameters (or MACs) are an
affine function of its kept layers, pairs and channels; :class:`CostModel` takes the coefficients from
the host's cost model (``Budget.bind``), so the search counts a genome exactly without building a plan.

Ranges: the paper's Table 1 (per-head attention ratio, MLP ratio, depth), chosen by the uniform
inheriting ratio of the blocks (:func:`preset_ranges`). Its 70% row reads "[0.3, 1]" for attention,
out of line with its neighbours (0.8 at 80%, 0.6 at 60%): taken as a typo for 0.7.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError

#: Table 1 of the paper, by target inheriting ratio: (attention ratio low, MLP ratio low, depth low as a
#: fraction of the layers; LLaMA-7B's 30/32 and 28/32). Ratios run up to 1, attention by 0.01, MLP by 0.05.
TABLE_1 = ((0.9, 0.9, 0.6, 1.0), (0.8, 0.8, 0.4, 1.0), (0.7, 0.7, 0.2, 30 / 32), (0.6, 0.6, 0.1, 28 / 32),
           (0.5, 0.6, 0.1, 28 / 32))
ATTENTION_STEP, MLP_STEP = 0.01, 0.05


def preset_ranges(ratio: float) -> dict:
    """Table 1's row for a uniform inheriting ratio (the nearest row at or above ``ratio``; below 50%
    the 50% row), with both lower bounds capped at ``ratio`` so the uniform start lies inside."""
    row = next((r for r in TABLE_1 if ratio >= r[0] - 1e-9), TABLE_1[-1])
    return {"attention": (min(row[1], ratio), 1.0), "mlp": (min(row[2], ratio), 1.0), "depth": row[3], "row": row[0]}


@dataclass(frozen=True)
class LayerUnits:
    """Searchable units of one source layer."""

    index: int
    groups: int          # KV groups (heads, for MHA)
    pairs: int           # RoPE pairs per head (head_dim / 2); 0: attention not searchable
    channels: int        # MLP channels


@dataclass
class SearchSpace:
    """Units per layer, the count grids the mutation draws from, and the depth range."""

    layers: tuple[LayerUnits, ...]
    attention_counts: tuple[int, ...]   # allowed kept pairs per group (attention ratio grid)
    mlp_counts: tuple[int, ...]         # allowed kept channels per layer (MLP ratio grid), per layer size
    min_depth: int
    keep_last: int = 1
    attention_searchable: bool = True

    @classmethod
    def build(cls, anatomy, attention: tuple[float, float], mlp: tuple[float, float], min_depth: int,
              keep_last: int = 1, attention_step: float = ATTENTION_STEP, mlp_step: float = MLP_STEP,
              mlp_multiple: int = 1) -> SearchSpace:
        """The space of ``anatomy`` with ratio ranges ``attention`` and ``mlp`` (low, high) on the
        paper's grids (a ratio maps to ``round(ratio * units)``; duplicates collapse)."""
        units = []
        for layer in anatomy.layers:
            if not layer.has_attention or not layer.has_mlp:
                raise AmoebaError(f"layer {layer.index} lacks attention or MLP; the search needs full decoder layers",
                                  "search the source model, not an export that removed sub-blocks")
            if layer.group_head_dims is not None or layer.head_channels is not None:
                raise AmoebaError(f"layer {layer.index} already has pruned head channels",
                                  "search the source model instead")
            units.append(LayerUnits(layer.index, layer.num_kv_groups, layer.head_dim // 2, layer.intermediate_size))
        searchable = not anatomy.qk_norm and anatomy.rope and all(l.pairs > 0 for l in units)
        sizes = {u.pairs for u in units}
        if len(sizes) > 1 or len({u.channels for u in units}) > 1:
            raise AmoebaError("the layers of this model differ in head_dim or MLP width",
                              "search a model whose layers share one shape (a source model)")
        pairs, channels = units[0].pairs, units[0].channels
        for name, (low, high) in (("attention", attention), ("mlp", mlp)):
            if not 0 < low <= high <= 1:
                raise AmoebaError(f"the {name} ratio range ({low}, {high}) is not inside (0, 1]",
                                  f"pass {name}_range=LOW,HIGH with 0 < LOW <= HIGH <= 1")
        if not 1 <= min_depth <= len(units):
            raise AmoebaError(f"the smallest depth {min_depth} is outside 1..{len(units)}",
                              f"pass min_depth between 1 and {len(units)}")
        if not 0 <= keep_last < len(units):
            raise AmoebaError(f"keep_last={keep_last} must be between 0 and {len(units) - 1}", "pass keep_last=1")
        return cls(tuple(units), _grid(attention, attention_step, pairs, 2) if searchable else (pairs,),
                   _grid(mlp, mlp_step, channels, mlp_multiple), min_depth, keep_last, searchable)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def describe(self) -> dict:
        first = self.layers[0]
        return {"layers": self.num_layers, "kv_groups": first.groups, "pairs_per_head": first.pairs,
                "mlp_channels": first.channels, "attention_searchable": self.attention_searchable,
                "attention_ratios": [round(c / first.pairs, 4) for c in self.attention_counts],
                "mlp_ratios": [round(c / first.channels, 4) for c in self.mlp_counts],
                "depth": [self.min_depth, self.num_layers], "keep_last": self.keep_last}


def _grid(bounds: tuple[float, float], step: float, units: int, multiple: int) -> tuple[int, ...]:
    """Kept counts for the ratios ``low, low + step, ..., high`` (and ``high`` itself)."""
    low, high = bounds
    n = int(math.floor((high - low) / step + 1e-9))
    ratios = [low + i * step for i in range(n + 1)] + [high]
    counts = set()
    for r in ratios:
        count = round(r * units / multiple) * multiple if multiple > 1 else round(r * units)
        counts.add(min(units, max(1, count)))
    return tuple(sorted(counts))


class CostModel:
    """A candidate's cost in a budget's unit (parameters, non-embedding parameters or MACs), exactly:
    ``base + sum over kept layers of (attention + per_pair * kept pairs, when any pair is kept)
    + (mlp + per_channel * kept channels, when any channel is kept)``, with the host's unit costs
    (``Budget.bind(anatomy).costs``): ``attention`` / ``mlp`` are a sub-block's fixed costs (norms,
    output biases, per-head q/k norms; with ``output_bias`` the compensation bias a reformation with an
    intercept adds), ``per_pair`` one RoPE pair of one KV group, ``per_channel`` one MLP channel. A
    layer whose groups keep no pair has no attention (a warm start may remove whole KV groups)."""

    def __init__(self, anatomy, budget: Budget, output_bias: bool = False):
        if budget.kind not in ("params", "nonembed", "count", "macs"):
            raise AmoebaError(f"the search counts parameters or MACs, not a '{budget.kind}' budget",
                              "use a params, nonembed, count or macs budget")
        self.budget, self.anatomy, self.output_bias = budget, anatomy, output_bias
        bound = budget.bind(anatomy)
        units = bound.costs
        bias = units.output_bias if output_bias else (0, 0)
        self.base = float(units.base)
        self.attention = [float(l.attention + bias[0]) for l in units.layers]
        self.mlp = [float(l.mlp + bias[1]) for l in units.layers]
        self.per_pair = [float(l.head_pair[0]) for l in units.layers]
        self.per_channel = [float(l.mlp_channel) for l in units.layers]
        self.target = float(bound.target)
        self.full = self.cost(range(len(anatomy.layers)),
                              [[la.head_dim // 2] * la.num_kv_groups for la in anatomy.layers],
                              [la.intermediate_size for la in anatomy.layers])

    def cost(self, layers, pairs, channels) -> float:
        """``layers``: kept layer indices; ``pairs[l]``: kept pairs per group of layer l (a sequence);
        ``channels[l]``: kept MLP channels of layer l."""
        total = self.base
        for l in layers:
            kept_pairs = sum(pairs[l])
            if kept_pairs:
                total += self.attention[l] + self.per_pair[l] * kept_pairs
            if channels[l]:
                total += self.mlp[l] + self.per_channel[l] * channels[l]
        return total


__all__ = ["ATTENTION_STEP", "MLP_STEP", "TABLE_1", "CostModel", "LayerUnits", "SearchSpace", "preset_ranges"]
