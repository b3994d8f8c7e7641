"""Hard-concrete (L0) gates (Louizos et al., 2018) with Sheared-LLaMA's parametrisation.

Each prunable unit owns one ``log_alpha``. Training draws a stretched, hard-clipped concrete sample
(one per forward, shared by the whole batch); the constraint reads the probability that a gate is
non-zero; the end of pruning keeps the top-k units of every row, valued as the official code does.
Pure functions on tensors, so the masks module and the tests use the same formulas.
"""
from __future__ import annotations

import math

import torch

#: stretch limits of the concrete distribution (l, r), temperature (beta), sampling epsilon
LIMIT_LEFT, LIMIT_RIGHT, TEMPERATURE, EPSILON = -0.1, 1.1, 2.0 / 3.0, 1e-6
#: initialisation N(5, 0.01) (the official code computes droprate_init=0.5, then overwrites it with 5)
INIT_MEAN, INIT_STD = 5.0, 1e-2
#: log_alpha is kept in [ln 0.01, ln 100]; so every gate starts at P(z > 0) = 0.998
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
#: the official deterministic gate value is sigmoid(log_alpha / beta * 0.8) ("magical_number")
DETERMINISTIC_SCALE = 0.8


def init_log_alpha(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(5, 0.01)`` draws, clamped into the allowed range (the official clamp at the first forward)."""
    t = torch.empty(shape).normal_(INIT_MEAN, INIT_STD, generator=generator)
    return t.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def init_from_scores(scores: torch.Tensor, keep: int, on: float = LOG_ALPHA_MAX,
                     off: float = LOG_ALPHA_MIN) -> torch.Tensor:
    """Logits that start at a chosen subnet: in every row (the last dimension) the ``keep`` units
    with the highest ``scores`` (ties: the lower index) at ``on``, the others at ``off``. At the
    clamp limits a kept gate is non-zero with P = 0.998 and a dropped one with P = 0.047, so the
    expected size starts at the target and the learned masks start near the metric's choice."""
    rows = scores.detach().float().reshape(-1, scores.shape[-1])
    out = torch.full_like(rows, float(off))
    k = max(0, min(int(keep), rows.shape[1]))
    for i, row in enumerate(rows.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        if order:
            out[i, torch.tensor(order)] = float(on)
    return out.reshape(scores.shape)


def clamp_(log_alpha: torch.Tensor) -> torch.Tensor:
    """Clamp in place (after every optimizer step)."""
    with torch.no_grad():
        return log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def sample(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (r - l) + l, 0, 1)``, differentiable
    in ``log_alpha``; ``u ~ U(eps, 1 - eps)`` from ``generator`` (seeded from (seed, step) by the trainer)."""
    u = torch.empty(log_alpha.shape, dtype=log_alpha.dtype).uniform_(EPSILON, 1 - EPSILON, generator=generator)
    u = u.to(log_alpha.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / TEMPERATURE)
    return (s * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z > 0) = 1 - Q(0) = sigmoid(log_alpha - beta * log(-l / r))``: the expected score."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-LIMIT_LEFT / LIMIT_RIGHT))


def deterministic_value(log_alpha: torch.Tensor) -> torch.Tensor:
    """The value a kept unit carries into the weights (the official ``sigmoid(0.8 log_alpha / beta)``)."""
    return torch.sigmoid(log_alpha / TEMPERATURE * DETERMINISTIC_SCALE)


def top_k_rows(log_alpha: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
    """Deterministic gates: in every row (the last dimension) the ``keep`` units with the largest
    ``log_alpha`` (ties: the lower index) carry :func:`deterministic_value`, the others 0.

    ``keep`` is one count for all rows (the exact target) or one per row (the current expected size)."""
    values = deterministic_value(log_alpha.detach())
    rows = values.reshape(-1, values.shape[-1])
    scores = log_alpha.detach().reshape(-1, values.shape[-1])
    keeps = keep.reshape(-1).tolist() if torch.is_tensor(keep) else [int(keep)] * rows.shape[0]
    out = torch.zeros_like(rows)
    n = rows.shape[1]
    for i, k in enumerate(keeps):
        k = max(0, min(int(k), n))
        # stable: sort by (-score, index)
        order = sorted(range(n), key=lambda j, s=scores[i].tolist(): (-s[j], j))[:k]
        if order:
            idx = torch.tensor(order)
            out[i, idx] = rows[i, idx]
    return out.reshape(values.shape)


__all__ = ["DETERMINISTIC_SCALE", "EPSILON", "INIT_MEAN", "INIT_STD", "LIMIT_LEFT", "LIMIT_RIGHT",
           "LOG_ALPHA_MAX", "LOG_ALPHA_MIN", "TEMPERATURE", "clamp_", "deterministic_value", "init_from_scores", "init_log_alpha",
           "prob_nonzero", "sample", "top_k_rows"]
