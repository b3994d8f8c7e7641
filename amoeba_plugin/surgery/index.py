"""Index arithmetic shared by soft and physical surgery: which rows/columns a plan keeps."""
from __future__ import annotations

import torch

from ..anatomy import LayerAnatomy
from ..plan import LayerPlan


def query_rows(lp: LayerPlan, layer: LayerAnatomy) -> list[int]:
    """Rows of q_proj (= columns of o_proj) kept, in the sliced model's order (group-major)."""
    hd, qpg = layer.head_dim, layer.queries_per_group
    return [(g * qpg + q) * hd + c for g, qs in zip(lp.kv_groups, lp.query_heads) for q in qs
            for c in lp.head_channels]


def kv_rows(lp: LayerPlan, layer: LayerAnatomy) -> list[int]:
    """Rows of k_proj and v_proj kept."""
    return [g * layer.head_dim + c for g in lp.kv_groups for c in lp.head_channels]


def mask(size: int, keep: list[int], like: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(size, dtype=like.dtype, device=like.device)
    if keep:
        m[torch.tensor(keep, device=like.device)] = 1
    return m
