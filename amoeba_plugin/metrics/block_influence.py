"""ShortGPT's block influence: how much a layer changes the hidden state that passes through it."""
from __future__ import annotations

import torch

from . import Metric
from ..calibration import ensure_statistics


class BlockInfluenceMetric(Metric):
    """``BI_i = 1 - mean_t cos(h_in_t, h_out_t)`` over calibration tokens: a layer that barely
    rotates its input is redundant. ``angular=True`` gives ``mean arccos(cos) / pi`` instead (the
    angular distance of Gromov et al.). Collected with the other statistics in one layer-by-layer
    pass; it needs no hooks on the linears.
    """

    name = "block-influence"
    description = "ShortGPT block influence 1 - cos(h_in, h_out) per layer; needs calibration"
    source = ("Men et al., 'ShortGPT: Layers in LLMs are More Redundant Than You Expect' (2024); angular "
              "variant: Gromov et al., 'The Unreasonable Ineffectiveness of the Deeper Layers' (2024)")
    units = frozenset({"layer"})
    needs_calibration = True

    def score(self, model, anatomy, unit, calibration=None, angular: bool = False, batch_size: int = 8,
              **options):
        self.check_unit(unit)
        self.check_calibration(calibration)
        stats = ensure_statistics(model, anatomy, calibration, sites=(), batch_size=batch_size)
        values = [stats.layer(layer.index).angular_distance if angular else stats.layer(layer.index).block_influence
                  for layer in anatomy.layers]
        return torch.tensor(values, dtype=torch.float32)


__all__ = ["BlockInfluenceMetric"]
