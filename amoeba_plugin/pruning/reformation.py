"""Reformation: refit the kept columns of column-pruned linears (o_proj, down_proj) by least squares.

Search for Efficient LLMs (Shen et al., NeurIPS 2024) solves ``min ||Ŵ X - W X||²`` subject to
the pruned columns of ``Ŵ`` being zero. Because whole columns are pruned, that is ordinary least
squares on the kept inputs, solved exactly here (``solver="exact"``):

    Ŵ[:, K] = W · H'[:, K] · H'[K, K]⁻¹,    H' = X Xᵀ + δI  (δ: the damping, see reform_columns)

The paper's ADMM (``solver="admm"``: ρ, iterations) converges to the same point; it is kept for
fidelity, with the projection zeroing the *pruned* entries (the paper's mask convention and the
released code's are inverted) and H normalised by its diagonal first so that ρ = 1 means the same
on every layer (as Boža's ADMM code does).

X must carry the pruned channels: inputs computed through the layer's *unpruned* rows, otherwise
the pruned channels are zero and reformation is a no-op. :func:`reformation_patch` collects them one
layer at a time in a :func:`~amoeba_plugin.calibration.layer_pass` (one Gram matrix per linear in
memory at a time) and returns a patch that :func:`amoeba_plugin.surgery.slice_model` folds in.
Which block inputs feed those rows is a choice the paper leaves open (``inputs``):

* ``"sequential"`` (default, SparseGPT-style): block by block through the subnet being reformed, so
  each block is fitted on what its pruned, already reformed predecessors really give it. Inside a
  block, o_proj sees the block's dense q/k/v on that input; down_proj sees the dense gate/up on the
  residual after the block's pruned, reformed attention (exactly the subnet's kept channels plus the
  pruned ones).
* ``"dense"``: every block's inputs from the dense model (one pass, cheaper, blind to upstream error).
"""
from __future__ import annotations

import torch

from ..errors import AmoebaError
from ..surgery.index import query_rows

SOLVERS = ("exact", "admm")
INPUTS = ("sequential", "dense")


def _kept_tensor(kept, size: int, device) -> torch.Tensor:
    idx = torch.as_tensor(list(kept), dtype=torch.long, device=device)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= size:
        raise AmoebaError(f"kept columns must be a non-empty subset of 0..{size - 1}", "check the plan")
    return idx


def reform_columns(weight: torch.Tensor, gram: torch.Tensor, kept, *, solver: str = "exact",
                   damping: float = 0.01, rho: float = 1.0, iterations: int = 30) -> torch.Tensor:
    """The refitted ``weight[:, kept]`` (``[out, len(kept)]``, in ``weight``'s dtype) minimising the
    output error on inputs whose Gram matrix is ``gram`` (``[in, in]``, summed ``x xᵀ``), damped:

        ||(Ŵ - W) X||² + δ ||Ŵ - W||²,   δ = damping · mean(diag H[K, K])  (ADMM: of the normalised H)

    i.e. H + δI in place of H, as SparseGPT damps. The solution moves from the least-squares fit
    (``damping=0``) towards the original kept columns (plain dropping) as the damping grows, so a few
    calibration tokens cannot pull the weights far from what the model was trained with, and a
    channel that never fired cannot make the system singular. (Adding δI to H[K, K] alone, without
    its term on the right-hand side, would shrink the kept columns towards zero instead.)"""
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
        delta = damping * (float(torch.diagonal(hkk).mean()) or 1.0)
        hkk = hkk + delta * torch.eye(len(k), dtype=h.dtype, device=h.device)
        rhs = (w @ h[:, k] + delta * w[:, k]).T  # [K, out]: W (H + δI)[:, K]
        return torch.linalg.solve(hkk, rhs).T.to(weight.dtype)
    # ADMM on the diagonally normalised problem: H <- D^-1/2 H D^-1/2, W <- W D^1/2
    d = torch.sqrt(torch.diagonal(h).clamp_min(1e-12))
    hn = h / d[:, None] / d[None, :]
    wn = w * d[None, :]
    keep = torch.zeros(w.shape[1], dtype=h.dtype, device=h.device)
    keep[k] = 1
    eye = torch.eye(len(d), dtype=h.dtype, device=h.device)
    inverse = torch.linalg.inv(hn + (damping + rho) * eye)  # damping as in the exact solver (diag(Hn) = 1)
    target = wn @ hn + damping * wn  # W (H + δI)
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


def with_intercept(weight: torch.Tensor, bias: torch.Tensor | None, stats) -> tuple[torch.Tensor, torch.Tensor]:
    """``([W, b], [[X Xᵀ, Σx], [Σxᵀ, n]])``: the linear with its bias as one more input column that is
    always 1, so refitting the kept columns plus that one fits an output bias too (least squares with
    an intercept; FLAP's bias compensation is its special case with the kept columns left alone)."""
    w = weight.detach()
    b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if bias is None else bias.detach()
    g = stats.gram.to(torch.float64)
    d = g.shape[0]
    aug = torch.empty(d + 1, d + 1, dtype=torch.float64, device=g.device)
    aug[:d, :d] = g
    aug[:d, d] = aug[d, :d] = stats.sum.to(g.device, torch.float64)
    aug[d, d] = float(stats.count)
    return torch.cat([w, b[:, None]], 1), aug


def _refit(model, layer, role: str, kept, stats, options: dict, patch: dict, report: dict | None) -> None:
    name = layer.modules[role]
    module = model.get_submodule(name)
    weight, gram = module.weight, stats.gram
    options = dict(options)
    if options.pop("bias", False):
        augmented, gram_aug = with_intercept(weight, module.bias, stats)
        solved = reform_columns(augmented, gram_aug, list(kept) + [weight.shape[1]], **options)
        reformed = solved[:, :-1]
        patch[f"{name}.bias"] = solved[:, -1].to(weight.dtype).clone()
        if report is not None:
            report[name] = {"dropped": round(output_error(augmented, gram_aug, list(kept) + [weight.shape[1]]), 6),
                            "reformed": round(output_error(augmented, gram_aug, list(kept) + [weight.shape[1]],
                                                           solved), 6)}
            report = None
    else:
        reformed = reform_columns(weight, gram, kept, **options)
    full = weight.detach().clone()
    full[:, torch.as_tensor(kept, dtype=torch.long, device=full.device)] = reformed.to(full.device)
    patch[f"{name}.weight"] = full
    if report is not None:
        report[name] = {"dropped": round(output_error(weight, gram, kept), 6),
                        "reformed": round(output_error(weight, gram, kept, reformed), 6)}


def reformation_patch(model, anatomy, plan, windows: torch.Tensor, *, solver: str = "exact", damping: float = 0.01,
                      rho: float = 1.0, iterations: int = 30, batch_size: int = 8, inputs: str = "sequential",
                      report: dict | None = None, bias: bool = False) -> dict[str, torch.Tensor]:
    """``{"<o_proj|down_proj>.weight": full-size weight whose kept columns are refitted}`` for every
    column-pruned linear of ``plan``, fitted on ``windows`` (see the module docstring for ``inputs``).
    Pass it as ``patch`` to ``slice_model`` / ``apply_soft``. ``report``, when given, receives the
    relative output error of each linear (on its fitting inputs) before and after. ``bias=True`` fits
    an output bias with the kept columns (an intercept; the patch then holds ``<linear>.bias`` too, and
    the plan should say ``output_bias``)."""
    if solver not in SOLVERS:
        raise AmoebaError(f"unknown reformation solver '{solver}'", f"use one of: {', '.join(SOLVERS)}")
    if inputs not in INPUTS:
        raise AmoebaError(f"unknown reformation inputs '{inputs}'", f"use one of: {', '.join(INPUTS)}")
    todo: dict[int, dict[str, list[int]]] = {}
    for layer, role, kept in _pieces(plan, anatomy):
        todo.setdefault(layer.index, {})[role] = kept
    patch: dict[str, torch.Tensor] = {}
    if not todo:
        return patch
    options = {"solver": solver, "damping": damping, "rho": rho, "iterations": iterations, "bias": bias}
    if inputs == "dense":
        from ..calibration import collect_statistics

        def on_layer(layer, stats):
            for role, kept in todo[layer.index].items():
                _refit(model, layer, role, kept, stats.input(role), options, patch, report)

        collect_statistics(model, anatomy, windows, gram=True, sites=("o", "down"), batch_size=batch_size,
                           layers=sorted(todo), on_layer=on_layer, keep_gram=False)
        return patch
    _sequential(model, anatomy, plan, windows, todo, options, patch, report, batch_size)
    return patch


def _sequential(model, anatomy, plan, windows, todo, options, patch, report, batch_size) -> None:
    """Block by block through the subnet: capture each pruned linear's input with the block's own
    rows unpruned, refit; the pass then moves the hidden states through the pruned, reformed block."""
    from ..calibration import InputStats, LayerStep, layer_pass
    from ..plan import LayerPlan, Plan

    def variant(index: int, **fields) -> Plan:
        """The plan with layer ``index`` replaced by a copy with ``fields`` unpruned."""
        layers = [LayerPlan(**{**vars(lp), **fields}) if lp.index == index else lp for lp in plan.layers]
        return Plan(layers, dict(plan.source), plan.hidden_channels, plan.output_bias, dict(plan.provenance))

    def refit(step: LayerStep) -> None:
        layer = step.layer
        roles = todo.get(layer.index, {})
        if "o" in roles:  # the block's dense q/k/v on the subnet's input
            acc = InputStats()
            step.run(variant(layer.index, kv_groups=None, query_heads=None, head_channels=None),
                     [(layer.modules["o"], lambda x: acc.add(x, True))])
            _refit(model, layer, "o", roles["o"], acc, options, patch, report)
        if "down" in roles:  # dense gate/up after the pruned, reformed attention
            acc = InputStats()
            step.run(variant(layer.index, mlp_channels=None), [(layer.modules["down"], lambda x: acc.add(x, True))])
            _refit(model, layer, "down", roles["down"], acc, options, patch, report)

    layer_pass(model, anatomy, windows, refit, subnet=plan, patch=patch, batch_size=batch_size, desc="reformation")


__all__ = ["INPUTS", "SOLVERS", "output_error", "reform_columns", "reformation_patch", "with_intercept"]
