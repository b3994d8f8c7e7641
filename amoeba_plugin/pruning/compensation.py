"""Bias compensation (FLAP): removed channels leave their mean contribution behind as an output bias.

Shared by every method that prunes o_proj / down_proj inputs and keeps what they contributed on
average: the ``flap`` baseline and the AmoebaLLM width masks.
"""
from __future__ import annotations

import torch

from ..anatomy import Anatomy
from ..plan import Plan
from ..surgery.index import query_rows


def output_bias_compensation(model, anatomy: Anatomy, plan: Plan, stats) -> dict[str, torch.Tensor]:
    """``{"<o_proj|down_proj>.bias": W_out[:, removed] @ mean_input[removed] (+ existing bias)}`` for
    every kept layer that keeps some attention / MLP. ``stats`` are the calibration statistics of
    :func:`amoeba_plugin.calibration.collect_statistics` on the dense model (input means of o and
    down). A layer that loses all of its attention or MLP loses that compensation with it."""
    patch = {}
    with torch.no_grad():
        for lp in plan.resolved(anatomy).layers:
            layer = anatomy.layer(lp.index)
            pieces = []
            if layer.has_attention and lp.kv_groups:
                pieces.append(("o", layer.num_query_heads * layer.head_dim, query_rows(lp, layer)))
            if layer.has_mlp and lp.mlp_channels:
                pieces.append(("down", layer.intermediate_size, lp.mlp_channels))
            for role, size, kept in pieces:
                module = model.get_submodule(layer.modules[role])
                removed = torch.ones(size, dtype=torch.bool)
                removed[kept] = False
                mean = stats.layer(layer.index).input(role).mean.to(module.weight.device, torch.float64)
                b = module.weight.detach().double()[:, removed] @ mean[removed]
                if module.bias is not None:
                    b = b + module.bias.detach().double()
                patch[f"{layer.modules[role]}.bias"] = b.to(module.weight.dtype)
    return patch


__all__ = ["output_bias_compensation"]
