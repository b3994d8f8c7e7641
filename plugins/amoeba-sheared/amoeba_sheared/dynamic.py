"""Dynamic batch loading: the per-domain loss gap to a reference reweights the mixture.

Every ``update_every`` steps (Sheared: 50 while pruning, 400 in continued pre-training) the trainer
measures each domain's held-out loss ``l`` and calls :func:`update_proportions`:

    delta = max(l - l_ref, 0)          (the paper's Algorithm 1; clip=False gives the code's unclipped gap)
    alpha = w * exp(eta * delta)       (exponentiated update; eta = 1)
    w'    = (1 - c) * alpha / sum(alpha) + c / k     (the code's smoothing, c = 1e-4)

so domains still above their reference get more data, and none is ever starved completely.
"""
from __future__ import annotations

import torch


def update_proportions(weights, losses, reference, eta: float = 1.0, smoothing: float = 1e-4,
                       clip: bool = True) -> torch.Tensor:
    """New proportions from the current ones, per-domain losses and reference losses (float64)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    delta = torch.as_tensor(losses, dtype=torch.float64) - torch.as_tensor(reference, dtype=torch.float64)
    if clip:
        delta = delta.clamp(min=0.0)
    alpha = torch.softmax(torch.log(w) + eta * delta, 0)  # == w * exp(eta * delta), normalised
    out = (1 - smoothing) * alpha + smoothing / len(w)
    return out / out.sum()


__all__ = ["update_proportions"]
