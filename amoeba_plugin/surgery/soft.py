"""Soft application: masks and layer skips through hooks and instance-level forward overrides.

No weight is copied or changed, and :meth:`SoftMask.remove` (or leaving the ``with`` block)
restores the model exactly. Used by search and training, where many plans are tried on one model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..anatomy import Anatomy
from ..plan import Plan
from .index import channel_rows, mask, query_rows


class SoftMask:
    """Handle of an applied soft plan; a context manager."""

    def __init__(self, model):
        self.model = model
        self._handles: list = []
        self._overridden: list = []

    def _override(self, module, forward) -> None:
        module.forward = forward
        self._overridden.append(module)

    def _hook(self, handle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for m in self._overridden:
            m.__dict__.pop("forward", None)
        self._handles, self._overridden = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _passthrough(hidden_states=None, *args, **kwargs):
    return hidden_states


def _no_attention(hidden_states=None, *args, **kwargs):
    return torch.zeros_like(hidden_states), None


def _scale_output(m: torch.Tensor):
    return lambda module, args, out: out * m


def _scale_input(m: torch.Tensor):
    return lambda module, args: (args[0] * m, *args[1:])


def _bias_delta(delta: torch.Tensor):
    return lambda module, args, out: out + delta.to(out.dtype)


def _patched_linear(weight, bias):
    def hook(module, args, out):
        return F.linear(args[0], module.weight if weight is None else weight.to(out.dtype),
                        module.bias if bias is None else bias.to(out.dtype))
    return hook


def _masked_rmsnorm(norm, m: torch.Tensor):
    """RMSNorm whose variance runs over the kept hidden channels only (Sheared-LLaMA semantics), so
    the masked model computes exactly what the sliced one does."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    kept = m.sum()

    def forward(hidden_states):
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        var = (x.pow(2) * m).sum(-1, keepdim=True) / kept
        return norm.weight * (x * torch.rsqrt(var + eps)).to(dtype) * m.to(dtype)
    return forward


def apply_soft(model, anatomy: Anatomy, plan: Plan, patch: dict | None = None) -> SoftMask:
    """Make ``model`` compute what the plan's subnet computes, reversibly."""
    plan.validate(anatomy)
    r = plan.resolved(anatomy)
    handle = SoftMask(model)
    get = model.get_submodule
    like = next(model.parameters())
    patch = patch or {}
    kept = {lp.index: lp for lp in r.layers}
    for owner in sorted({name.rpartition(".")[0] for name in patch}):
        w, b = patch.get(f"{owner}.weight"), patch.get(f"{owner}.bias")
        module = get(owner)
        if w is None:  # a new bias only: add the difference, so whatever the module computes (a peft
            # wrapper's base + adapters, say) is kept
            old = getattr(module, "bias", None)
            b = b.to(like.device)  # a patch read from disk sits on the CPU; the model may not
            delta = b.detach() if old is None else (b - old).detach()
            handle._hook(module.register_forward_hook(_bias_delta(delta)))
        else:
            handle._hook(module.register_forward_hook(_patched_linear(
                w.to(like.device), None if b is None else b.to(like.device))))
    hidden_mask = None
    if plan.hidden_channels is not None:
        hidden_mask = mask(anatomy.hidden_size, r.hidden_channels, like)
        handle._hook(get(anatomy.embed).register_forward_hook(_scale_output(hidden_mask)))
        handle._override(get(anatomy.final_norm), _masked_rmsnorm(get(anatomy.final_norm), hidden_mask))
    for layer in anatomy.layers:
        module = get(f"{anatomy.layers_path}.{layer.index}")
        lp = kept.get(layer.index)
        if lp is None:
            handle._override(module, _passthrough)
            continue
        mods = layer.modules
        if layer.has_attention and not lp.kv_groups:
            handle._override(get(mods["o"].rsplit(".", 1)[0]), _no_attention)
        elif layer.has_attention:
            q_keep = query_rows(lp, layer)
            if len(q_keep) < layer.q_width:
                handle._hook(get(mods["o"]).register_forward_pre_hook(
                    _scale_input(mask(layer.q_width, q_keep, like))))
            all_q, all_kv = channel_rows(lp, layer)
            if len(all_kv) < layer.kv_width:
                handle._hook(get(mods["q"]).register_forward_hook(_scale_output(mask(layer.q_width, all_q, like))))
                for role in ("k", "v"):
                    handle._hook(get(mods[role]).register_forward_hook(
                        _scale_output(mask(layer.kv_width, all_kv, like))))
            if hidden_mask is not None:
                handle._hook(get(mods["o"]).register_forward_hook(_scale_output(hidden_mask)))
                handle._override(get(mods["input_norm"]), _masked_rmsnorm(get(mods["input_norm"]), hidden_mask))
        if layer.has_mlp and not lp.mlp_channels:
            mlp = get(mods["down"].rsplit(".", 1)[0])
            handle._override(mlp, lambda x, *a, **k: torch.zeros_like(x))
        elif layer.has_mlp:
            if len(lp.mlp_channels) < layer.intermediate_size:
                handle._hook(get(mods["down"]).register_forward_pre_hook(
                    _scale_input(mask(layer.intermediate_size, lp.mlp_channels, like))))
            if hidden_mask is not None:
                handle._hook(get(mods["down"]).register_forward_hook(_scale_output(hidden_mask)))
                norm = get(mods["post_attention_norm"])
                handle._override(norm, _masked_rmsnorm(norm, hidden_mask))
    return handle
