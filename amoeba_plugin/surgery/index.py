"""Index arithmetic shared by soft and physical surgery: which rows/columns a plan keeps."""
from __future__ import annotations

import torch

from ..anatomy import LayerAnatomy
from ..plan import LayerPlan


def _group_offsets(layer: LayerAnatomy, per_group: int) -> list[int]:
    """Row where each KV group's block starts, when each group holds ``per_group`` heads."""
    offsets, at = [], 0
    for dim in layer.group_dims():
        offsets.append(at)
        at += per_group * dim
    return offsets


def query_rows(lp: LayerPlan, layer: LayerAnatomy) -> list[int]:
    """Rows of q_proj (= columns of o_proj) kept by a resolved plan, in the sliced model's order
    (group-major; heads of a group may keep channels other groups do not)."""
    dims, start = layer.group_dims(), _group_offsets(layer, layer.queries_per_group)
    return [start[g] + q * dims[g] + c for g, qs, chs in zip(lp.kv_groups, lp.query_heads, lp.group_channels())
            for q in qs for c in chs]


def kv_rows(lp: LayerPlan, layer: LayerAnatomy) -> list[int]:
    """Rows of k_proj and v_proj kept by a resolved plan."""
    start = _group_offsets(layer, 1)
    return [start[g] + c for g, chs in zip(lp.kv_groups, lp.group_channels()) for c in chs]


def channel_rows(lp: LayerPlan, layer: LayerAnatomy) -> tuple[list[int], list[int]]:
    """Rows of q_proj and of k_proj/v_proj whose *channel* a resolved plan keeps, over every query
    head of each kept group (kept or not: whole heads are masked at o_proj's input instead) and
    over every row of a dropped group: what soft surgery masks to drop head channels."""
    dims, qpg = layer.group_dims(), layer.queries_per_group
    kept = dict(zip(lp.kv_groups, lp.group_channels()))
    q, kv = [], []
    q_at = kv_at = 0
    for g, dim in enumerate(dims):
        chs = kept.get(g, range(dim))
        kv += [kv_at + c for c in chs]
        q += [q_at + h * dim + c for h in range(qpg) for c in chs]
        kv_at += dim
        q_at += qpg * dim
    return q, kv


def mask(size: int, keep: list[int], like: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(size, dtype=like.dtype, device=like.device)
    if keep:
        m[torch.tensor(keep, device=like.device)] = 1
    return m
