"""Random scores: the control every importance metric has to beat."""
from __future__ import annotations

import zlib

import torch

from . import UNITS, Metric


class RandomMetric(Metric):
    """Uniform random scores from a generator seeded with ``seed`` (option, default 0) and the unit
    type, so equal seeds give equal scores. RoPE-paired head channels get equal scores."""

    name = "random"
    description = "seeded uniform random scores (the control); needs no data"
    source = "the random baseline of LLM-Pruner, FLAP, ShortGPT and most structured-pruning papers"
    units = frozenset(UNITS)

    def score(self, model, anatomy, unit, calibration=None, seed: int = 0, **options):
        self.check_unit(unit)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(unit.encode()))

        def draw(n: int) -> torch.Tensor:
            return torch.rand(n, generator=g)

        if unit == "layer":
            return draw(anatomy.num_layers)
        if unit == "hidden_channel":
            return draw(anatomy.hidden_size)
        out = []
        for layer in anatomy.layers:
            if unit == "mlp_channel":
                out.append(draw(layer.intermediate_size))
            elif not layer.has_attention:
                out.append(torch.zeros(0))
            elif unit == "kv_group":
                out.append(draw(layer.num_kv_groups))
            elif unit == "query_head":
                out.append(draw(layer.num_query_heads))
            else:  # head_channel: one score per RoPE pair
                half = draw(layer.head_dim // 2)
                out.append(torch.cat([half, half]) if anatomy.rope and layer.head_dim % 2 == 0
                           else draw(layer.head_dim))
        return out


__all__ = ["RandomMetric"]
