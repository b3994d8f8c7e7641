"""Weight magnitude: the data-free baseline every structured-pruning paper reports."""
from __future__ import annotations

import torch

from .linear import LinearMetric, present, weight
from .units import COLUMN_ROLES, ROW_ROLES


class MagnitudeMetric(LinearMetric):
    """L1 norm of the weights a unit owns.

    * ``mlp_channel``: ``|gate row|_1 + |up row|_1 + |down column|_1``
    * ``query_head``: the head's q rows plus its o columns (heads numbered group-major)
    * ``kv_group``: the group's query heads plus its k and v rows
    * ``head_channel``: the channel's q, k, v rows and o columns over all heads, RoPE pairs summed
    * ``hidden_channel``: every weight reading or writing the channel, embeddings included (norms not)
    * ``layer``: mean ``|W|`` over the layer's linears
    """

    name = "magnitude"
    description = "weight magnitude (L1 norm of the weights a unit owns); needs no data"
    source = "weight magnitude (L1), the baseline of LLM-Pruner (Ma et al., 2023) and FLAP (An et al., 2024)"
    units = frozenset({"mlp_channel", "query_head", "kv_group", "head_channel", "hidden_channel", "layer"})

    def saliency(self, model, layer, role, prepared, **options):
        return weight(model, layer.modules[role]).abs()

    def hidden_extra(self, model, anatomy, prepared, **options):
        score = weight(model, anatomy.embed).abs().sum(0)
        if not anatomy.tied_embeddings:
            score = score + weight(model, anatomy.lm_head).abs().sum(0)
        return score

    def layer_scores(self, model, anatomy, prepared, **options):
        scores = []
        for layer in anatomy.layers:
            total, count = 0.0, 0
            for role in ROW_ROLES + COLUMN_ROLES:
                if present(layer, role):
                    w = weight(model, layer.modules[role])
                    total += float(w.abs().sum(dtype=torch.float64))
                    count += w.numel()
            scores.append(total / count if count else 0.0)
        return torch.tensor(scores)


__all__ = ["MagnitudeMetric"]
