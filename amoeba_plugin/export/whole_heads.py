"""Head-channel pruning written back as whole heads: pruned channels become zero rows, in place.

vLLM and llama.cpp run one head_dim in every layer. A plan that keeps a subset of the channels of
each head (the Search backend's per-KV-group channels, ``head_channels``) slices q_proj, k_proj and
v_proj rows and o_proj columns of the pruned channels; the sliced model rotates each kept channel
with its *source* RoPE frequency and scales scores by ``source_head_dim ** -0.5``. Writing every
kept channel back at its source position, with zeros at the pruned ones, computes exactly that in
a model of the source head_dim:

* q·k: a pruned channel is zero in both, and RoPE pairs channel j with j + head_dim/2, which plans
  keep together, so a zero pair rotates to zero and every kept pair keeps its own frequency;
* the scale is the source head_dim's, as in the sliced model;
* v·o: a pruned channel's zero value row meets a zero o_proj column.

Each KV group gets its own channels (per-group plans) and q/k/v biases are padded the same way.
q/k norms could not be exact (they normalise over the whole head) and are refused by the plan
itself (``Plan.validate``) and by the exporters.
"""
from __future__ import annotations

from dataclasses import replace

import torch


def _group_channels(channels, kv_heads: int) -> list[list[int]]:
    return [list(c) for c in channels] if channels and isinstance(channels[0], list) else [list(channels)] * kv_heads


def _unpack(t: torch.Tensor, groups: list[list[int]], per_group: int, head_dim: int, dim: int) -> torch.Tensor:
    """``t``'s packed rows along ``dim`` (group after group, ``per_group`` heads each keeping the
    group's channels) placed at their source positions in whole heads of ``head_dim``; zeros elsewhere."""
    index = []
    for g, channels in enumerate(groups):
        for h in range(per_group):
            index += [(g * per_group + h) * head_dim + c for c in channels]
    t = t.movedim(dim, 0)
    out = t.new_zeros(len(groups) * per_group * head_dim, *t.shape[1:])
    out[torch.tensor(index, dtype=torch.long, device=t.device)] = t
    return out.movedim(0, dim).contiguous()


def whole_heads(shapes: list, state: dict[str, torch.Tensor], head_dim: int) -> tuple[list, dict, int]:
    """``shapes`` (``decilm.LayerShape``) and the sliced ``state`` with every head-channel layer
    padded to whole heads of ``head_dim``; and the number of zero parameters that added."""
    state, out, padding = dict(state), [], 0
    for i, s in enumerate(shapes):
        if not s.query_heads or s.head_channels is None:
            out.append(s)
            continue
        groups = _group_channels(s.head_channels, s.kv_heads)
        attn = f"model.layers.{i}.self_attn."
        for role, per_group, dim in (("q_proj", s.query_heads // s.kv_heads, 0), ("k_proj", 1, 0),
                                     ("v_proj", 1, 0), ("o_proj", s.query_heads // s.kv_heads, 1)):
            for kind in ("weight", "bias"):
                name = f"{attn}{role}.{kind}"
                if name not in state or (role == "o_proj" and kind == "bias"):
                    continue
                padded = _unpack(state[name], groups, per_group, head_dim, dim)
                padding += padded.numel() - state[name].numel()
                state[name] = padded
        out.append(replace(s, head_dim=head_dim, head_channels=None))
    return out, state, padding


__all__ = ["whole_heads"]
