"""Warm starts: the search may start from the best plan at hand as well as from the uniform OBS start.

The paper starts from one uniform inheriting ratio in every block. On SmolLM2-135M that start is far
worse than FLAP's adaptive allocation (perplexity 1,379 against 164 at 70% of the parameters), and a
CPU-sized search does not climb out of it (docs/searchllm.md). So the search can also start from:

* ``flap``: FLAP's adaptive allocation computed with the host's public helpers (the ``fluctuation``
  metric on the dense model's o_proj / down_proj inputs, standardised per layer, one global ranking
  of KV groups and MLP channels, :func:`amoeba_plugin.pruning.allocation.global_width`);
* a plan file (any method's ``plan.json``, :class:`amoeba_plugin.plan.Plan`).

Either becomes a genome (:func:`candidate_from_plan`): removed KV groups keep no pair, a removed MLP
keeps no channel. Plans that prune query heads inside a group, or hidden channels, cannot be
expressed by the search's masks and are refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import Plan

from .genome import Candidate
from .space import SearchSpace

#: ``warm_start`` values besides a plan path
WARM_STARTS = ("none", "flap")


def candidate_from_plan(plan: Plan, anatomy, space: SearchSpace) -> Candidate:
    """``plan`` as a genome of ``space``: kept layers, per-group kept RoPE pairs, kept MLP channels."""
    plan.validate(anatomy)
    if plan.hidden_channels is not None:
        raise AmoebaError("the warm-start plan prunes hidden channels, which the search cannot express",
                          "warm-start from a plan that keeps the hidden size (or warm_start=none)")
    c = Candidate.full(space)
    c.kept[:] = False
    for lp in plan.resolved(anatomy).layers:
        la = anatomy.layer(lp.index)
        c.kept[lp.index] = True
        half = la.head_dim // 2
        masks = [np.zeros(space.layers[lp.index].pairs, dtype=bool) for _ in range(la.num_kv_groups)]
        for g, queries, channels in zip(lp.kv_groups, lp.query_heads, lp.group_channels()):
            if len(queries) != la.queries_per_group:
                raise AmoebaError(f"the warm-start plan prunes query heads inside KV group {g} of layer {lp.index}, "
                                  "which the search's per-group masks cannot express",
                                  "warm-start from a plan that keeps or removes whole KV groups")
            pairs = sorted({j % half for j in channels})
            if space.attention_searchable:
                masks[g][pairs] = True
            else:
                masks[g][:] = True
        c.attention[lp.index] = masks
        mlp = np.zeros(space.layers[lp.index].channels, dtype=bool)
        mlp[lp.mlp_channels] = True
        c.mlp[lp.index] = mlp
    return c


def flap_plan(model, anatomy, budget, stats, *, output_bias: bool = True) -> Plan:
    """FLAP's plan for ``budget`` from dense-model statistics ``stats`` (sites o and down, with the
    q and gate sites the fluctuation metric also reads)."""
    from amoeba_plugin.plugins import get
    from amoeba_plugin.pruning.allocation import global_width, standardized_unit_scores

    roles = get("metrics", "fluctuation").role_scores(model, anatomy, stats)
    groups, channels = standardized_unit_scores(anatomy, roles)
    return global_width(anatomy, budget, groups, channels, "searchllm warm start", output_bias=output_bias)


def load_plan(path: str, anatomy) -> Plan:
    """A plan file for ``anatomy``, or one clear error."""
    p = Path(path)
    if not p.is_file():
        raise AmoebaError(f"warm_start={path!r} is neither {' nor '.join(WARM_STARTS)} nor a plan file",
                          "pass warm_start=flap, warm_start=none or the path of a plan.json")
    plan = Plan.load(p)
    return plan.validate(anatomy)


__all__ = ["WARM_STARTS", "candidate_from_plan", "flap_plan", "load_plan"]
