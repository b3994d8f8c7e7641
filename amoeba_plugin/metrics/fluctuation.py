"""FLAP's fluctuation metric (WIFV): how much an input channel varies, times what its weights carry."""
from __future__ import annotations

from .linear import StatisticsMetric, weight


class FluctuationMetric(StatisticsMetric):
    """``Var(X_j) * ||W[:, j]||_2^2`` for input channel ``j`` of o_proj and down_proj (WIFV).

    A channel whose input hardly varies can be replaced by its mean (FLAP's bias compensation), so
    its removal costs little even when its weights are large. Attention channel scores are squared
    before heads are formed, as FLAP's code does (``square_attention=False`` turns that off); a
    head's score is the sum over its channels. Hidden channels use the variance of the normed
    residual stream read by q, k, v, gate and up.
    """

    name = "fluctuation"
    description = "FLAP's WIFV: input fluctuation times squared column norm; needs calibration"
    source = ("An et al., 'Fluctuation-based Adaptive Structured Pruning for LLMs' (FLAP, AAAI 2024), "
              "metric WIFV; CASIA-IVA-Lab/FLAP lib/prune.py")
    units = frozenset({"mlp_channel", "query_head", "kv_group", "head_channel", "hidden_channel"})

    def saliency(self, model, layer, role, stats, **options):
        w = weight(model, layer.modules[role])
        fluctuation = stats.layer(layer.index).input(role).variance.to(w.device, w.dtype)
        return w.pow(2) * fluctuation[None, :]

    def finish(self, role, scores, square_attention: bool = True, **options):
        return scores.pow(2) if role == "o" and square_attention else scores


__all__ = ["FluctuationMetric"]
