"""The L0 module: one hard-concrete mask family per pruned structure, its expected size, and the
Lagrangian that drives it to the target shape.

Families (rows x units): ``layer`` (1 x layers), ``kv`` (layers x KV groups), ``query`` (layers x
queries per group, one mask shared by every group of a layer, so a GQA model keeps equal queries per
group; absent on MHA, where ``kv`` is the head mask), ``intermediate`` (layers x MLP width) and
``hidden`` (1 x hidden size). Only families whose target is below the source get a mask.
"""
from __future__ import annotations

import torch
from torch import nn

from . import hard_concrete as hc
from .target import STRUCTURES, Shape, target_sparsity


class ShearingMasks(nn.Module):
    """Mask logits for pruning ``source`` to ``target``; ``log_alpha[family]`` is ``[rows, units]``."""

    def __init__(self, source: Shape, target: Shape, head_dim: int, seed: int = 0):
        super().__init__()
        self.source, self.target, self.head_dim = source, target, head_dim
        self.targets = target_sparsity(source, target)
        sizes = {"layer": (1, source.layers), "kv": (source.layers, source.kv_heads),
                 "query": (source.layers, source.queries_per_group),
                 "intermediate": (source.layers, source.intermediate), "hidden": (1, source.hidden)}
        g = torch.Generator().manual_seed(int(seed))
        self.log_alpha = nn.ParameterDict({f: nn.Parameter(hc.init_log_alpha(sizes[f], g))
                                           for f in STRUCTURES if f in self.targets})

    def init_from_scores(self, scores: dict[str, torch.Tensor]) -> None:
        """Start every family at the top units of ``scores`` (:func:`.hard_concrete.init_from_scores`
        with the target counts); ``scores[family]`` as :func:`amoeba_sheared.target.shape_plan` takes them
        (1-D for ``layer`` and ``hidden``, ``[layers, units]`` for the others)."""
        counts = self.target.counts()
        with torch.no_grad():
            for f, p in self.log_alpha.items():
                p.copy_(hc.init_from_scores(scores[f].reshape(p.shape).to(p.device), counts[f]))

    @property
    def families(self) -> list[str]:
        return list(self.log_alpha.keys())

    def clamp_(self) -> None:
        for p in self.log_alpha.values():
            hc.clamp_(p)

    # ------------------------------------------------------------------ gates
    def sample(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One training draw per family (shared by the whole batch)."""
        return {f: hc.sample(p, generator) for f, p in self.log_alpha.items()}

    def deterministic(self, exact: bool = True) -> dict[str, torch.Tensor]:
        """Top-k gates per row: exactly the target counts (``exact``), or the current expected size
        ``round(sum P(z > 0))`` per row (the official evaluation during pruning)."""
        counts = self.target.counts()
        out = {}
        for f, p in self.log_alpha.items():
            keep = counts[f] if exact else torch.round(hc.prob_nonzero(p.detach()).sum(-1)).long()
            out[f] = hc.top_k_rows(p, keep)
        return out

    # ------------------------------------------------------------------ expected size
    def expected_sparsity(self) -> dict[str, torch.Tensor]:
        """``1 - sum P(z > 0) / units`` per row (differentiable): what the Lagrangian constrains."""
        return {f: 1.0 - hc.prob_nonzero(p).mean(-1) for f, p in self.log_alpha.items()}

    def probabilities(self) -> dict[str, torch.Tensor]:
        """``P(z > 0)`` of every family, ones for the families that are not pruned."""
        s = self.source
        ones = {"layer": (1, s.layers), "kv": (s.layers, s.kv_heads), "query": (s.layers, s.queries_per_group),
                "intermediate": (s.layers, s.intermediate), "hidden": (1, s.hidden)}
        device = next(iter(self.log_alpha.values())).device if len(self.log_alpha) else None
        return {f: hc.prob_nonzero(self.log_alpha[f]).detach() if f in self.log_alpha
                else torch.ones(ones[f], device=device) for f in STRUCTURES}

    def expected_parameters(self) -> float:
        """Expected non-embedding linear parameters (Sheared's ``get_expected_num_params``, with GQA):
        ``sum_l P(layer_l) * H * (head_dim * (2 E[q_l] + 2 E[kv_l]) + 3 E[int_l])``, where
        ``H = sum P(hidden)``, ``E[kv_l] = sum_g P(kv_lg)`` and ``E[q_l] = E[kv_l] * sum_q P(query_lq)``."""
        return float(expected_parameters(self.probabilities(), self.head_dim))

    def target_at(self, step: int, warmup_steps: int) -> dict[str, float]:
        """The warmed-up targets: ``t_final * min(1, step / warmup_steps)`` (start sparsity 0)."""
        ramp = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
        return {f: t * ramp for f, t in self.targets.items()}


def expected_parameters(probs: dict[str, torch.Tensor], head_dim: int) -> torch.Tensor:
    """See :meth:`ShearingMasks.expected_parameters`; ``probs`` holds every family's ``P(z > 0)``."""
    layer = probs["layer"].reshape(-1)
    kv = probs["kv"].sum(-1)
    queries = kv * probs["query"].sum(-1)
    hidden = probs["hidden"].sum()
    per_layer = hidden * (head_dim * (2 * queries + 2 * kv) + 3 * probs["intermediate"].sum(-1))
    return (layer * per_layer).sum()


class Lagrangian(nn.Module):
    """``lambda_1 * (s - t) + lambda_2 * (s - t)^2`` per family, averaged over its rows, with one
    (lambda_1, lambda_2) pair per family (zero-initialised); the optimizer maximises the lambdas."""

    def __init__(self, families: list[str]):
        super().__init__()
        self.lambda_1 = nn.ParameterDict({f: nn.Parameter(torch.zeros(())) for f in families})
        self.lambda_2 = nn.ParameterDict({f: nn.Parameter(torch.zeros(())) for f in families})

    def forward(self, expected: dict[str, torch.Tensor], target: dict[str, float]) -> torch.Tensor:
        total = torch.zeros(())
        for f, s in expected.items():
            gap = s - target[f]
            total = total + self.lambda_1[f] * gap.mean() + self.lambda_2[f] * gap.pow(2).mean()
        return total

    def values(self) -> dict[str, list[float]]:
        return {f: [round(self.lambda_1[f].item(), 5), round(self.lambda_2[f].item(), 5)] for f in self.lambda_1}


__all__ = ["Lagrangian", "ShearingMasks", "expected_parameters"]
