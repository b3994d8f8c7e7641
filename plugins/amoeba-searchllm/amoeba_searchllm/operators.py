"""Variation operators: ratio and mask mutation, depth mutation, block-wise crossover.

Mask mutation (the paper's Algorithm 1) draws a new mask of the (possibly new) ratio that overlaps the
old one. Taken literally it draws a uniformly random subset and accepts it only if
``|old ∩ new| >= alpha * N``: the overlap of a random subset concentrates at ``r_old * r_new * N``, so
below a ratio of about 0.9 the test almost never passes and the old mask comes back after ``eta``
tries. ``mode="constructive"`` (the default) builds the new mask directly: it keeps
``ceil(alpha * min(|old|, k))`` of the old channels and draws the rest from the others, so it always
has the new ratio and the required overlap. ``mode="paper_literal"`` is kept for comparison; when it
gives up, the candidate keeps its old mask *and* its old ratio (a ratio whose mask did not follow is
not a gene here, see :mod:`.genome`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amoeba_plugin.errors import AmoebaError

from .genome import Candidate
from .space import SearchSpace

MASK_MODES = ("constructive", "paper_literal")
DEPTH_RULES = ("influence", "last", "random")


@dataclass(frozen=True)
class Rates:
    """Per-gene probabilities of one mutation: ratio (``ratio``), mask (``mask``), depth (``depth``)."""

    ratio: float
    mask: float
    depth: float


def mutate_mask(mask: np.ndarray, keep: int, p_mask: float, rng: np.random.Generator, alpha: float = 0.8,
                mode: str = "constructive", eta: int = 1000) -> np.ndarray:
    """A mask with ``keep`` ones: ``mask`` itself when its size is already ``keep`` and no mask mutation
    is drawn (probability ``1 - p_mask``), else a new one overlapping it (see the module docstring)."""
    old = np.flatnonzero(mask)
    if len(old) == keep and rng.random() >= p_mask:
        return mask
    n = len(mask)
    if mode == "constructive":
        n_old = math.ceil(alpha * min(len(old), keep))  # <= both, as alpha <= 1
        kept_old = rng.choice(old, n_old, replace=False) if n_old else np.empty(0, dtype=np.int64)
        rest = np.setdiff1d(np.arange(n), kept_old, assume_unique=True)
        new = np.concatenate([kept_old, rng.choice(rest, keep - n_old, replace=False)])
        out = np.zeros(n, dtype=bool)
        out[new] = True
        return out
    if mode != "paper_literal":
        raise AmoebaError(f"unknown mask mutation mode '{mode}'", f"use one of: {', '.join(MASK_MODES)}")
    old_set = mask.copy()
    for _ in range(eta):
        new = rng.choice(n, keep, replace=False)
        if old_set[new].sum() >= alpha * n:
            out = np.zeros(n, dtype=bool)
            out[new] = True
            return out
    return mask


class Variation:
    """The operators of one search, bound to its space, settings and layer influence scores."""

    def __init__(self, space: SearchSpace, *, alpha: float = 0.8, mask_mode: str = "constructive", eta: int = 1000,
                 depth_rule: str = "influence", influence=None):
        if mask_mode not in MASK_MODES:
            raise AmoebaError(f"unknown mask mutation mode '{mask_mode}'", f"use one of: {', '.join(MASK_MODES)}")
        if depth_rule not in DEPTH_RULES:
            raise AmoebaError(f"unknown depth rule '{depth_rule}'", f"use one of: {', '.join(DEPTH_RULES)}")
        if not 0 <= alpha <= 1:
            raise AmoebaError(f"alpha={alpha} is not in [0, 1]", "pass the overlap fraction, e.g. alpha=0.8")
        if depth_rule == "influence" and influence is None:
            raise AmoebaError("the 'influence' depth rule needs layer influence scores", "pass influence=...")
        self.space, self.alpha, self.mask_mode, self.eta = space, alpha, mask_mode, eta
        self.depth_rule = depth_rule
        self.influence = None if influence is None else np.asarray(influence, dtype=float)

    # ------------------------------------------------------------------ mutation
    def mutate(self, parent: Candidate, rates: Rates, rng: np.random.Generator) -> Candidate:
        """Depth mutation with probability ``rates.depth``, then, on every kept layer, each ratio gene
        resampled from its grid with probability ``rates.ratio`` and each mask mutated."""
        child = parent.copy()
        if rates.depth and rng.random() < rates.depth:
            self._mutate_depth(child, rng)
        for layer in child.layers:
            if self.space.attention_searchable:
                groups = child.attention[layer]
                for g, m in enumerate(groups):
                    keep = int(rng.choice(self.space.attention_counts)) if rng.random() < rates.ratio else int(m.sum())
                    groups[g] = mutate_mask(m, keep, rates.mask, rng, self.alpha, self.mask_mode, self.eta)
            m = child.mlp[layer]
            keep = int(rng.choice(self.space.mlp_counts)) if rng.random() < rates.ratio else int(m.sum())
            child.mlp[layer] = mutate_mask(m, keep, rates.mask, rng, self.alpha, self.mask_mode, self.eta)
        return child

    def removable(self, candidate: Candidate) -> list[int]:
        """Kept layers a depth mutation may drop (never the last ``keep_last`` layers of the model)."""
        last = self.space.num_layers - self.space.keep_last
        return [l for l in candidate.layers if l < last]

    def _mutate_depth(self, child: Candidate, rng: np.random.Generator) -> None:
        """Drop one kept layer or re-add one dropped layer (each half the time when both are possible)."""
        removable = self.removable(child)
        dropped = [int(l) for l in np.flatnonzero(~child.kept)]
        can_drop = child.depth > self.space.min_depth and removable
        if not can_drop and not dropped:
            return
        if can_drop and (not dropped or rng.random() < 0.5):
            child.kept[self._pick_removal(removable, rng)] = False
        else:
            child.kept[int(rng.choice(dropped))] = True

    def _pick_removal(self, removable: list[int], rng: np.random.Generator) -> int:
        if self.depth_rule == "last":  # the official code drops the trailing blocks
            return max(removable)
        if self.depth_rule == "random":
            return int(rng.choice(removable))
        # influence: the layer that changes its input least is likeliest (weight 1/rank by block influence)
        order = sorted(removable, key=lambda l: self.influence[l])
        weights = np.array([1.0 / (rank + 1) for rank in range(len(order))])
        return int(order[rng.choice(len(order), p=weights / weights.sum())])

    # ------------------------------------------------------------------ crossover
    def crossover(self, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate | None:
        """Block-wise uniform crossover: each layer (kept or not, with its masks) from either parent.
        None when the child's depth falls outside the space."""
        take_b = rng.random(self.space.num_layers) < 0.5
        child = a.copy()
        for layer in np.flatnonzero(take_b):
            child.kept[layer] = b.kept[layer]
            child.attention[layer] = [m.copy() for m in b.attention[layer]]
            child.mlp[layer] = b.mlp[layer].copy()
        last = self.space.num_layers - self.space.keep_last
        if child.depth < self.space.min_depth or not child.kept[last:].all():
            return None
        return child


__all__ = ["DEPTH_RULES", "MASK_MODES", "Rates", "Variation", "mutate_mask"]
