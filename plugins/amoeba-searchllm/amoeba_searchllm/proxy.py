"""A cheap stand-in for reformation inside the fitness: score the candidate as it will be reformed.

The paper scores the *unreformed* subnet and reforms only the winner, so the search ranks candidates
by how well they do without the step that changes them most (on SmolLM2 at 50% the reformed uniform
start came within reach of the reformed search result, benchmarks/README.md). ``fitness_reform``:

* ``none``: the paper's; the masked subnet as it is;
* ``bias``: FLAP's bias compensation, ``b = W[:, removed] · mean(x[removed])`` on o_proj / down_proj;
* ``refit``: per-layer damped least squares with an intercept on the *dense* model's inputs,
  ``min ||Ŵ_K X_K + b − W X||² + δ||Ŵ_K − W_K||²`` (the final reformation's problem without its
  sequential inputs), from Gram matrices collected once. Each layer's fit is cached by its mask, so a
  child pays only for the layers its mutation touched.

Each returns a patch (``apply_soft(model, anatomy, plan, patch)`` applies it with the masks).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from amoeba_plugin.surgery.index import query_rows

FITNESS_REFORMS = ("none", "bias", "refit")


def augmented_gram(stats) -> torch.Tensor:
    """``[[X Xᵀ, Σx], [Σxᵀ, n]]``: the Gram matrix of the inputs with a constant 1 appended (the intercept)."""
    g, s, n = stats.gram, stats.sum, stats.count
    d = g.shape[0]
    out = torch.empty(d + 1, d + 1, dtype=torch.float64, device=g.device)
    out[:d, :d] = g
    out[:d, d] = s
    out[d, :d] = s
    out[d, d] = float(n)
    return out


def refit_with_bias(weight: torch.Tensor, bias: torch.Tensor | None, gram_aug: torch.Tensor, kept,
                    damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ŵ[:, kept], b)`` minimising ``||Ŵ_K X_K + b − (W X + b0)||² + δ||[Ŵ_K, b] − [W_K, b0]||²`` with
    ``δ = damping · mean(diag H[K, K])`` (the host reformation's damping, the intercept as one more
    kept input that is always 1)."""
    w = weight.detach().to(torch.float64)
    b0 = (torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None
          else bias.detach().to(w.device, torch.float64))
    wa = torch.cat([w, b0[:, None]], 1)
    h = gram_aug.to(w.device, torch.float64)  # solved where the weight lives (the statistics may sit on the CPU)
    k = torch.as_tensor(list(kept) + [w.shape[1]], dtype=torch.long)
    hkk = h[k][:, k]
    delta = damping * (float(torch.diagonal(hkk)[:-1].mean()) if len(k) > 1 else 1.0)
    hkk = hkk + delta * torch.eye(len(k), dtype=h.dtype, device=h.device)
    rhs = (wa @ h[:, k] + delta * wa[:, k]).T
    sol = torch.linalg.solve(hkk, rhs).T
    return sol[:, :-1].to(weight.dtype), sol[:, -1].to(weight.dtype)


def _augmented_weight(module) -> torch.Tensor:
    w = module.weight.detach().to(torch.float64)
    b = (torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if module.bias is None
         else module.bias.detach().double())
    return torch.cat([w, b[:, None]], 1)


def _solve(gram: torch.Tensor, wh: torch.Tensor, wa: torch.Tensor, kept, damping: float):
    """:func:`refit_with_bias` from a precomputed ``H`` and ``W·H`` (float32: a proxy, not the final fit)."""
    k = torch.as_tensor(list(kept) + [wa.shape[1] - 1], dtype=torch.long)
    hkk = gram[k][:, k]
    delta = damping * float(torch.diagonal(hkk)[:-1].mean())
    hkk = hkk + delta * torch.eye(len(k), dtype=hkk.dtype, device=hkk.device)
    rhs = (wh[:, k] + delta * wa[:, k]).T
    sol = torch.linalg.solve(hkk, rhs).T
    return sol[:, :-1], sol[:, -1]


class ReformProxy:
    """Patches that compensate a candidate's pruned o_proj / down_proj columns (see the module
    docstring); ``stats``: dense-model statistics of the o and down inputs (with Gram matrices for
    ``refit``)."""

    def __init__(self, model, anatomy, stats, mode: str = "refit", damping: float = 0.01, cache_size: int = 512):
        self.model, self.anatomy, self.mode, self.damping = model, anatomy, mode, damping
        self.inputs = {}
        for layer in anatomy.layers:
            for role in ("o", "down"):
                acc = stats.layer(layer.index).input(role)
                prepared = None
                if mode == "refit":  # H and W·H once per linear: a refit then only solves on the kept columns
                    module = model.get_submodule(layer.modules[role])
                    gram = augmented_gram(acc).to(module.weight.device)  # candidates are solved beside the weights
                    wa = _augmented_weight(module)
                    prepared = (gram.float(), (wa @ gram).float(), wa.float())
                self.inputs[(layer.index, role)] = (acc.mean, prepared)
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.hits = self.misses = 0

    def _pieces(self, plan):
        for lp in plan.resolved(self.anatomy).layers:
            layer = self.anatomy.layer(lp.index)
            if layer.has_attention and lp.kv_groups:
                kept = query_rows(lp, layer)
                if len(kept) < layer.q_width:
                    yield layer, "o", kept, layer.q_width
            if layer.has_mlp and lp.mlp_channels and len(lp.mlp_channels) < layer.intermediate_size:
                yield layer, "down", list(lp.mlp_channels), layer.intermediate_size

    @torch.no_grad()
    def patch(self, plan) -> dict[str, torch.Tensor]:
        if self.mode == "none":
            return {}
        out = {}
        for layer, role, kept, size in self._pieces(plan):
            name = layer.modules[role]
            module = self.model.get_submodule(name)
            mean, gram = self.inputs[(layer.index, role)]
            if self.mode == "bias":
                device = module.weight.device
                removed = torch.ones(size, dtype=torch.bool, device=device)
                removed[kept] = False
                b = module.weight.detach().double()[:, removed] @ mean.to(device, torch.float64)[removed]
                if module.bias is not None:
                    b = b + module.bias.detach().double()
                out[f"{name}.bias"] = b.to(module.weight.dtype)
                continue
            key = (name, np.packbits(np.isin(np.arange(size), kept)).tobytes())
            hit = self.cache.get(key)
            if hit is None:
                self.misses += 1
                w_k, b = _solve(*gram, kept, self.damping)
                hit = (w_k.half(), b)  # half precision: a cache entry is a fraction of the layer
                self.cache[key] = hit
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            else:
                self.hits += 1
                self.cache.move_to_end(key)
            full = module.weight.detach().clone()
            full[:, torch.as_tensor(kept, dtype=torch.long)] = hit[0].to(full.dtype)
            out[f"{name}.weight"], out[f"{name}.bias"] = full, hit[1]
        return out


__all__ = ["FITNESS_REFORMS", "ReformProxy", "augmented_gram", "refit_with_bias"]
