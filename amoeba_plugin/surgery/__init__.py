"""Applying a plan to a model: softly (masks, reversible) or physically (a smaller model).

The two must agree: a masked forward equals the sliced forward to float tolerance (tested).
A *patch* maps source parameter names (e.g. ``model.layers.3.mlp.down_proj.bias``) to tensors of
the source shape that replace or add parameters: compensation biases, reformed weights.
"""
from .physical import build_config, slice_model, slice_state_dict
from .soft import SoftMask, apply_soft

__all__ = ["SoftMask", "apply_soft", "build_config", "slice_model", "slice_state_dict"]
