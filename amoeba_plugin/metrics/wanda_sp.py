"""Wanda-sp: the structured form of Wanda's weight-times-activation score."""
from __future__ import annotations

from .linear import StatisticsMetric, weight


class WandaSPMetric(StatisticsMetric):
    """``|W_ij| * ||X_j||_2`` summed over a unit's weights, where ``X_j`` is input channel ``j`` of
    the linear over all calibration tokens.

    As in FLAP's ``wanda_sp`` baseline, heads, KV groups and MLP channels are scored on the columns
    of o_proj and down_proj (the weights that read the pruned channels); hidden channels on the
    columns of q, k, v, gate and up (the readers of the normed residual stream).
    """

    name = "wanda-sp"
    description = "activation-weighted magnitude |W_ij|·||X_j||, structured (Wanda-sp); needs calibration"
    source = ("Sun et al., 'A Simple and Effective Pruning Approach for LLMs' (Wanda, 2023); structured "
              "variant 'Wanda-sp' as defined and released with FLAP (An et al., AAAI 2024)")
    units = frozenset({"mlp_channel", "query_head", "kv_group", "head_channel", "hidden_channel"})

    def saliency(self, model, layer, role, stats, **options):
        w = weight(model, layer.modules[role])
        norm = stats.layer(layer.index).input(role).norm_sq.sqrt().to(w.device, w.dtype)
        return w.abs() * norm[None, :]


__all__ = ["WandaSPMetric"]
