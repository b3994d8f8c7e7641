"""Reformation: refit the kept columns of column-pruned linears (o_proj, down_proj) by least squares.

Search for Efficient LLMs (Shen et al., NeurIPS 2024) solves ``min ||Ŵ X - W X||²`` subject to
the pruned columns of ``Ŵ`` being zero. Because whole columns are pruned, that is ordinary least
squares on the kept inputs, solved exactly here (``solver="exact"``):

    Ŵ[:, K] = W · H[:, K] · (H[K, K] + λI)⁻¹,    H = X Xᵀ

The paper's ADMM (``solver="admm"``: ρ, iterations) converges to the same point; it is kept for
fidelity, with the projection zeroing the *pruned* entries (the paper's mask convention and the
released code's are inverted) and H normalised by its diagonal first so that ρ = 1 means the same
on every layer (as Boža's ADMM code does).

X must carry the pruned channels: inputs computed through the layer's unpruned rows (the dense
model), otherwise the pruned channels are zero and reformation is a no-op. :func:`reformation_patch`
collects them layer by layer from the dense model (one Gram matrix per site in memory at a time)
and returns a patch that :func:`amoeba_plugin.surgery.slice_model` folds in. For down_proj these
inputs are exactly the subnet's kept channels plus the pruned ones; for o_proj the kept heads see
the dense model's block inputs, not the pruned subnet's (the paper does not say which; taking block
inputs sequentially from the already-reformed subnet is the research notes' suggestion and is left
to the Search backend, which can pass its own statistics to :func:`reform_columns`).
"""
from __future__ import annotations

import torch

from .errors import AmoebaError
from .surgery.index import query_rows

SOLVERS = ("exact", "admm")


def _kept_tensor(kept, size: int, device) -> torch.Tensor:
    idx = torch.as_tensor(list(kept), dtype=torch.long, device=device)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= size:
        raise AmoebaError(f"kept columns must be a non-empty subset of 0..{size - 1}", "check the plan")
    return idx


def reform_columns(weight: torch.Tensor, gram: torch.Tensor, kept, *, solver: str = "exact",
                   damping: float = 0.01, rho: float = 1.0, iterations: int = 30) -> torch.Tensor:
    """The refitted ``weight[:, kept]`` (``[out, len(kept)]``, in ``weight``'s dtype) minimising the
    output error on inputs whose Gram matrix is ``gram`` (``[in, in]``, summed ``x xᵀ``).

    ``damping`` adds ``damping · mean(diag H[K, K])`` to the kept block (the exact solver) or to the
    normalised H (ADMM), so a channel that never fired cannot make the system singular."""
    if solver not in SOLVERS:
        raise AmoebaError(f"unknown reformation solver '{solver}'", f"use one of: {', '.join(SOLVERS)}")
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise AmoebaError(f"the Gram matrix {tuple(gram.shape)} does not match the weight's {weight.shape[1]} inputs",
                          "collect the statistics of this linear's input")
    w = weight.detach().to(torch.float64)
    h = gram.detach().to(device=w.device, dtype=torch.float64)
    k = _kept_tensor(kept, w.shape[1], w.device)
    if solver == "exact":
        hkk = h[k][:, k]
        scale = float(torch.diagonal(hkk).mean()) or 1.0
        hkk = hkk + damping * scale * torch.eye(len(k), dtype=h.dtype, device=h.device)
        rhs = (w @ h[:, k]).T  # [K, out]
        return torch.linalg.solve(hkk, rhs).T.to(weight.dtype)
    # ADMM on the diagonally normalised problem: H <- D^-1/2 H D^-1/2, W <- W D^1/2
    d = torch.sqrt(torch.diagonal(h).clamp_min(1e-12))
    hn = h / d[:, None] / d[None, :]
    wn = w * d[None, :]
    keep = torch.zeros(w.shape[1], dtype=h.dtype, device=h.device)
    keep[k] = 1
    eye = torch.eye(len(d), dtype=h.dtype, device=h.device)
    inverse = torch.linalg.inv(hn + (damping + rho) * eye)  # damping as in the exact solver (diag(Hn) = 1)
    target = wn @ hn  # W H (its transpose is H Wᵀ)
    z, u = wn * keep, torch.zeros_like(wn)
    for _ in range(iterations):
        x = (target + rho * (z - u)) @ inverse
        z = (x + u) * keep
        u = u + x - z
    return (z / d[None, :])[:, k].to(weight.dtype)


def output_error(weight: torch.Tensor, gram: torch.Tensor, kept, reformed: torch.Tensor | None = None) -> float:
    """Relative output error ``||Ŵ_K X_K - W X||_F / ||W X||_F`` from the Gram matrix alone
    (``reformed=None``: the kept columns as they are, i.e. plain dropping)."""
    w = weight.detach().to(torch.float64)
    h = gram.detach().to(device=w.device, dtype=torch.float64)
    k = _kept_tensor(kept, w.shape[1], w.device)
    new = torch.zeros_like(w)
    new[:, k] = w[:, k] if reformed is None else reformed.detach().to(w.device, torch.float64)
    diff = new - w
    num = torch.trace(diff @ h @ diff.T)
    den = torch.trace(w @ h @ w.T)
    return float(torch.sqrt(num.clamp_min(0) / den)) if float(den) > 0 else 0.0


def _pieces(plan, anatomy):
    """``(layer, role, kept columns)`` of every column-pruned o_proj / down_proj in ``plan``."""
    for lp in plan.resolved(anatomy).layers:
        layer = anatomy.layer(lp.index)
        if layer.has_attention and lp.kv_groups:
            kept = query_rows(lp, layer)
            if len(kept) < layer.q_width:
                yield layer, "o", kept
        if layer.has_mlp and lp.mlp_channels and len(lp.mlp_channels) < layer.intermediate_size:
            yield layer, "down", list(lp.mlp_channels)


def reformation_patch(model, anatomy, plan, windows: torch.Tensor, *, solver: str = "exact", damping: float = 0.01,
                      rho: float = 1.0, iterations: int = 30, batch_size: int = 8,
                      report: dict | None = None) -> dict[str, torch.Tensor]:
    """``{"<o_proj|down_proj>.weight": full-size weight whose kept columns are refitted}`` for every
    column-pruned linear of ``plan``, from the dense model's inputs on ``windows`` (collected one layer
    at a time). Pass it as ``patch`` to ``slice_model`` / ``apply_soft``. ``report``, when given,
    receives the relative output error of each linear before and after."""
    from .metrics.collect import collect_statistics

    if solver not in SOLVERS:
        raise AmoebaError(f"unknown reformation solver '{solver}'", f"use one of: {', '.join(SOLVERS)}")
    todo: dict[int, list] = {}
    for layer, role, kept in _pieces(plan, anatomy):
        todo.setdefault(layer.index, []).append((role, kept))
    patch: dict[str, torch.Tensor] = {}
    if not todo:
        return patch

    def on_layer(layer, stats):
        for role, kept in todo.get(layer.index, []):
            name = layer.modules[role]
            weight = model.get_submodule(name).weight
            gram = stats.input(role).gram
            reformed = reform_columns(weight, gram, kept, solver=solver, damping=damping, rho=rho,
                                      iterations=iterations)
            full = weight.detach().clone()
            full[:, torch.as_tensor(kept, dtype=torch.long, device=full.device)] = reformed.to(full.device)
            patch[f"{name}.weight"] = full
            if report is not None:
                report[name] = {"dropped": round(output_error(weight, gram, kept), 6),
                                "reformed": round(output_error(weight, gram, kept, reformed), 6)}

    collect_statistics(model, anatomy, windows, gram=True, sites=("o", "down"), batch_size=batch_size,
                       layers=sorted(todo), on_layer=on_layer, keep_gram=False)
    return patch


__all__ = ["SOLVERS", "output_error", "reform_columns", "reformation_patch"]
