"""The masked forward: gates multiply a Hugging Face model's activations through hooks.

Where each gate acts (Sheared-LLaMA's placement, with GQA):

* ``kv`` x ``query`` (a head's gate is its group's times its in-group index's): the head's attention
  output, at the input of ``o_proj``;
* ``intermediate``: the input of ``down_proj``;
* ``layer`` x ``hidden``: the output of ``o_proj`` and of ``down_proj`` (each block's residual delta);
* ``hidden``: the embedding output, and every RMSNorm, which normalises over the channels whose gate
  is non-zero and scales its output by the gate.

So a gate of 0 removes its unit exactly, and :func:`amoeba_sheared.fold.fold_masks` can fold the
surviving gate values into the weights and slice. Works on a peft-wrapped model too (the hooks sit
on the LoRA wrappers, so base and adapter paths are both gated).
"""
from __future__ import annotations

import torch
from torch import nn

from .masks import ShearingMasks


def inner_model(model):
    """The transformers model under a peft wrapper (its module names are the anatomy's)."""
    base = getattr(model, "base_model", None)
    return base.model if base is not None and hasattr(base, "peft_config") else model


def gate_scales(masks: ShearingMasks, gates: dict[str, torch.Tensor]) -> dict:
    """Per-layer multipliers from family gates (``None`` where nothing is pruned): ``head``
    (``[heads * head_dim]``, the o_proj input), ``intermediate`` (the down_proj input), ``block``
    (layer gate times hidden gate, the o_proj and down_proj outputs) and ``hidden``."""
    s, hd = masks.source, masks.head_dim
    out = {"hidden": gates["hidden"].reshape(-1) if "hidden" in gates else None, "head": [], "block": [],
           "intermediate": []}
    for l in range(s.layers):
        head = None
        if "kv" in gates or "query" in gates:
            like = gates["kv"] if "kv" in gates else gates["query"]  # the absent family: ones beside it
            kv = gates["kv"][l] if "kv" in gates else torch.ones(s.kv_heads, device=like.device)
            q = gates["query"][l] if "query" in gates else torch.ones(s.queries_per_group, device=like.device)
            head = (kv[:, None] * q[None, :]).reshape(-1).repeat_interleave(hd)
        block = gates["layer"].reshape(-1)[l] if "layer" in gates else None
        if out["hidden"] is not None:
            block = out["hidden"] if block is None else block * out["hidden"]
        out["head"].append(head)
        out["block"].append(block)
        out["intermediate"].append(gates["intermediate"][l] if "intermediate" in gates else None)
    return out


class MaskedModel(nn.Module):
    """``model`` with ``masks`` applied; what the trainer wraps (and DDP synchronises).

    ``forward(input_ids, generator)`` draws training gates from ``generator``; in eval mode it uses
    deterministic gates (``exact`` targets, or the current expected size) and returns the logits and
    the expected sparsities (differentiable, for the Lagrangian)."""

    def __init__(self, model, anatomy, masks: ShearingMasks):
        super().__init__()
        self.model, self.masks, self.anatomy = model, masks, anatomy
        self.exact = False
        self._scales: dict = {}
        self._handles: list = []
        self._overridden: list = []
        self.attach()

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        fam = set(self.masks.families)
        get = inner_model(self.model).get_submodule
        a = self.anatomy
        hidden = "hidden" in fam

        def pre(kind, l):
            return lambda module, args: (args[0] * self._scales[kind][l].to(args[0].dtype), *args[1:])

        def post(l):
            return lambda module, args, out: out * self._scales["block"][l].to(out.dtype)

        if hidden:
            self._handles.append(get(a.embed).register_forward_hook(
                lambda module, args, out: out * self._scales["hidden"].to(out.dtype)))
            self._norm(get(a.final_norm))
        for layer in a.layers:
            l, mods = layer.index, layer.modules
            if fam & {"kv", "query"}:
                self._handles.append(get(mods["o"]).register_forward_pre_hook(pre("head", l)))
            if "intermediate" in fam:
                self._handles.append(get(mods["down"]).register_forward_pre_hook(pre("intermediate", l)))
            if fam & {"layer", "hidden"}:
                for role in ("o", "down"):
                    self._handles.append(get(mods[role]).register_forward_hook(post(l)))
            if hidden:
                self._norm(get(mods["input_norm"]))
                self._norm(get(mods["post_attention_norm"]))

    def _norm(self, norm) -> None:
        """RMSNorm over the channels with a non-zero gate, its output scaled by the gate."""
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

        def forward(hidden_states):
            z = self._scales["hidden"]
            dtype = hidden_states.dtype
            x = hidden_states.to(torch.float32)
            kept = (z != 0).to(torch.float32)
            var = (x.pow(2) * kept).sum(-1, keepdim=True) / kept.sum()
            return norm.weight * (x * torch.rsqrt(var + eps)).to(dtype) * z.to(dtype)

        norm.forward = forward
        self._overridden.append(norm)

    def detach(self) -> None:
        """Remove every hook and override (the model computes its own forward again)."""
        for h in self._handles:
            h.remove()
        for m in self._overridden:
            m.__dict__.pop("forward", None)
        self._handles, self._overridden = [], []

    # ------------------------------------------------------------------ forward
    def gates(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.training:
            return self.masks.sample(generator)
        return self.masks.deterministic(exact=self.exact)

    def forward(self, input_ids, generator: torch.Generator | None = None, gates: dict | None = None):
        self._scales = gate_scales(self.masks, self.gates(generator) if gates is None else gates)
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        return logits, self.masks.expected_sparsity()


__all__ = ["MaskedModel", "gate_scales", "inner_model"]
