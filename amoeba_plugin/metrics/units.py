"""From per-weight or per-channel scores to the units a plan keeps, one rule for every metric.

A linear's scores come in two orientations: *rows* (output channels of q, k, v, gate, up) and
*columns* (input channels of o, down). These helpers fold them into heads, KV groups, MLP channels
and RoPE-paired head channels, so GQA is aggregated the same way everywhere:

* a query head owns ``head_dim`` q rows and ``head_dim`` o columns;
* a KV group owns ``head_dim`` k rows, ``head_dim`` v rows and all ``queries_per_group`` query heads
  that read them (heads are numbered group-major);
* an MLP channel owns a gate row, an up row and a down column;
* head channel ``j`` (shared by all heads) is paired with ``j + head_dim/2`` under RoPE.
"""
from __future__ import annotations

import torch

from ..anatomy import LayerAnatomy


def per_head(scores: torch.Tensor, heads: int) -> torch.Tensor:
    """``[heads * head_dim]`` channel scores -> ``[heads]`` (sum over each head's channels)."""
    return scores.reshape(heads, -1).sum(1)


def per_group(head_scores: torch.Tensor, groups: int) -> torch.Tensor:
    """``[num_query_heads]`` (group-major) -> ``[groups]`` (sum over each group's query heads)."""
    return head_scores.reshape(groups, -1).sum(1)


def per_head_channel(scores: torch.Tensor, heads: int, rope: bool = True) -> torch.Tensor:
    """``[heads * head_dim]`` -> ``[head_dim]``: summed over heads, then over RoPE pairs when ``rope``
    (channel ``j`` and ``j + head_dim/2`` both get the pair's sum)."""
    channel = scores.reshape(heads, -1).sum(0)
    if rope:
        half = channel.numel() // 2
        pair = channel[:half] + channel[half:2 * half]
        channel = torch.cat([pair, pair]) if channel.numel() % 2 == 0 else channel
    return channel


def attention_units(layer: LayerAnatomy, q_rows: torch.Tensor, o_cols: torch.Tensor,
                    k_rows: torch.Tensor | None = None, v_rows: torch.Tensor | None = None,
                    rope: bool = True) -> dict[str, torch.Tensor]:
    """Query-head, KV-group and head-channel scores of one layer from its row/column scores.

    ``q_rows``/``o_cols`` have ``num_query_heads * head_dim`` entries, ``k_rows``/``v_rows``
    ``num_kv_groups * head_dim`` (optional: metrics that read only o columns, like Wanda-sp and FLAP,
    leave them out).
    """
    nq, g = layer.num_query_heads, layer.num_kv_groups
    heads = per_head(q_rows + o_cols, nq)
    groups = per_group(heads, g)
    kv = torch.zeros_like(groups)
    if k_rows is not None:
        kv = kv + per_head(k_rows, g)
    if v_rows is not None:
        kv = kv + per_head(v_rows, g)
    channels = per_head_channel(q_rows + o_cols, nq, rope)
    if k_rows is not None or v_rows is not None:
        kv_channels = sum(r for r in (k_rows, v_rows) if r is not None)
        channels = channels + per_head_channel(kv_channels, g, rope)
    return {"query_head": heads, "kv_group": groups + kv, "head_channel": channels}




#: linears whose *rows* (output channels) belong to a unit: heads, groups, MLP channels
ROW_ROLES = ("q", "k", "v", "gate", "up")
#: linears whose *columns* (input channels) belong to a unit
COLUMN_ROLES = ("o", "down")


def layer_units(layer: LayerAnatomy, unit: str, roles: dict[str, torch.Tensor], rope: bool = True) -> torch.Tensor:
    """One layer's scores for a per-layer ``unit`` from its linears' unit-oriented scores.

    ``roles`` maps a role to its row scores (q, k, v, gate, up) or column scores (o, down); a
    missing role contributes nothing (Wanda-sp and FLAP score only o and down columns).
    """
    if unit == "mlp_channel":
        if not layer.has_mlp:
            return torch.zeros(0)
        parts = [roles[r].float() for r in ("gate", "up", "down") if r in roles]
        return sum(parts) if parts else torch.zeros(layer.intermediate_size)
    if not layer.has_attention:
        return torch.zeros(0)
    if layer.group_head_dims is not None:
        from ..errors import AmoebaError

        raise AmoebaError(f"layer {layer.index} keeps a different number of channels in each KV group's heads "
                          "(a searched subnet), so its heads cannot be scored as units of one size",
                          "score and prune the source model instead, or keep this layer's attention whole")
    width = layer.num_query_heads * layer.head_dim
    zeros = torch.zeros(width)
    q = roles["q"].float() if "q" in roles else zeros
    o = roles["o"].float() if "o" in roles else zeros
    k = roles["k"].float() if "k" in roles else None
    v = roles["v"].float() if "v" in roles else None
    return attention_units(layer, q, o, k, v, rope)[unit]


__all__ = ["COLUMN_ROLES", "ROW_ROLES", "attention_units", "layer_units", "per_group", "per_head",
           "per_head_channel"]
