"""Calibration statistics, collected in one :func:`~amoeba_plugin.calibration.layer_pass` over the
dense model: each decoder layer runs once on the stored hidden states of all calibration windows,
with hooks on its linears that accumulate the statistics metrics need.

What is accumulated per *input site* (the input of a linear; q, k and v share one, gate and up share
one), in float64:

* ``count``, ``sum``, ``sumsq`` per channel: the mean (FLAP's bias compensation), the variance
  (FLAP's fluctuation) and the squared L2 norm over tokens (Wanda's ``||X_j||^2``);
* optionally the Gram matrix ``X X^T`` (OBS / SparseGPT saliency, least-squares reformation).

Per layer it also accumulates the cosine similarity between the layer's input and output hidden
states per token (ShortGPT's block influence, and its angular variant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..anatomy import Anatomy
from ..errors import AmoebaError
from .layerwise import LayerStep, check_windows, layer_pass

#: the input site each linear reads: q, k, v read the attention input; gate, up read the MLP input
INPUT_SITE = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}
SITES = ("q", "o", "gate", "down")


@dataclass
class InputStats:
    """Running statistics of one linear's input channels over calibration tokens (float64)."""

    count: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor, gram: bool) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if self.sum is None:
            d = x.shape[-1]
            self.sum = torch.zeros(d, dtype=torch.float64, device=x.device)
            self.sumsq = torch.zeros(d, dtype=torch.float64, device=x.device)
            if gram:
                self.gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)
        if self.gram is not None:
            self.gram += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-channel variance over tokens (FLAP's input fluctuation)."""
        n = self.count
        if n < 2:
            return torch.zeros_like(self.sum)
        return ((self.sumsq - self.sum * self.sum / n) / (n - 1)).clamp_min(0)

    @property
    def norm_sq(self) -> torch.Tensor:
        """Squared L2 norm of each channel over all tokens (Wanda's ``||X_j||_2^2``)."""
        return self.sumsq

    def hessian(self, damping: float = 0.01) -> torch.Tensor:
        """``H = 2 X X^T / n`` with ``damping * mean(diag H)`` added to the diagonal (SparseGPT)."""
        if self.gram is None:
            raise AmoebaError("the Gram matrix was not collected", "collect statistics with gram=True")
        h = 2.0 * self.gram / max(self.count, 1)
        diag = torch.diagonal(h)
        damp = damping * float(diag.mean()) if float(diag.mean()) > 0 else damping
        dead = diag == 0  # channels that never fired: keep H invertible
        h = h.clone()
        idx = torch.arange(h.shape[0], device=h.device)
        h[idx, idx] += damp
        h[dead, dead] = 1.0
        return h

    def to(self, device) -> InputStats:
        move = (lambda t: None if t is None else t.to(device))
        return InputStats(self.count, move(self.sum), move(self.sumsq), move(self.gram))


@dataclass
class LayerStats:
    """Statistics of one source layer: its input sites and its block influence."""

    index: int
    inputs: dict[str, InputStats] = field(default_factory=dict)
    cos_sum: float = 0.0
    angle_sum: float = 0.0
    tokens: int = 0

    def input(self, role: str) -> InputStats:
        """Statistics of the input read by the linear of ``role`` (q, k, v, o, gate, up, down)."""
        site = INPUT_SITE.get(role, role)
        if site not in self.inputs:
            raise AmoebaError(f"no statistics for the input of '{role}' in layer {self.index}",
                              "collect statistics for that site (sites=...)")
        return self.inputs[site]

    @property
    def block_influence(self) -> float:
        """ShortGPT's BI: ``1 - mean cos(h_in, h_out)`` over tokens."""
        return 1.0 - self.cos_sum / max(self.tokens, 1)

    @property
    def angular_distance(self) -> float:
        """``mean arccos(cos) / pi`` over tokens (the angular variant of BI)."""
        return self.angle_sum / max(self.tokens, 1)


@dataclass
class CalibrationStats:
    """Everything :func:`collect_statistics` gathered, by source layer index."""

    layers: dict[int, LayerStats]
    windows: int
    tokens_per_window: int
    gram: bool
    sites: tuple[str, ...]
    fingerprint: str = ""

    def layer(self, index: int) -> LayerStats:
        return self.layers[index]

    def has(self, *, gram: bool = False, sites: tuple[str, ...] = ()) -> bool:
        return (self.gram or not gram) and set(sites) <= set(self.sites)


@torch.no_grad()
def collect_statistics(model, anatomy: Anatomy, windows: torch.Tensor, *, gram: bool = False,
                       sites: tuple[str, ...] = SITES, batch_size: int = 8,
                       layers: list[int] | None = None, on_layer=None, keep_gram: bool = True
                       ) -> CalibrationStats:
    """Run ``windows`` (LongTensor ``[n, seq_len]``) through the model layer by layer and gather the
    input statistics of ``sites`` (any of q, o, gate, down) and each layer's block influence.

    ``gram=True`` also accumulates ``X X^T`` per site (memory: d^2 float64 per site of one layer at a
    time on the accumulating side, kept for every layer in the result). ``layers`` limits the hooks to
    some source layers (all layers still run). ``on_layer(layer_anatomy, layer_stats)`` is called as
    soon as a layer is done, so a metric can turn its Gram matrices into scores right away; with
    ``keep_gram=False`` they are then dropped, and memory holds one layer's Gram matrices at a time.
    Deterministic: same windows, same numbers.
    """
    check_windows(windows)
    bad = set(sites) - set(SITES)
    if bad:
        raise AmoebaError(f"unknown input site(s): {', '.join(sorted(bad))}", f"use some of {', '.join(SITES)}")
    wanted = set(range(anatomy.num_layers)) if layers is None else set(layers)
    result: dict[int, LayerStats] = {}

    def calibrate(step: LayerStep) -> None:
        la = step.layer
        if la.index not in wanted:
            return  # the pass still propagates it
        stats = LayerStats(la.index)
        hooks = []
        for site in sites:
            name = la.modules.get(site)
            if name is None:
                continue
            acc = stats.inputs.setdefault(site, InputStats())
            hooks.append((name, lambda x, acc=acc: acc.add(x, gram)))

        def influence(h: torch.Tensor, out: torch.Tensor) -> None:
            cos = torch.nn.functional.cosine_similarity(h.float(), out.float(), dim=-1)
            cos = cos.clamp(-1.0, 1.0).double()
            stats.cos_sum += float(cos.sum())
            stats.angle_sum += float((torch.arccos(cos) / math.pi).sum())
            stats.tokens += cos.numel()

        step.propagate(hooks, influence)
        if on_layer is not None:
            on_layer(la, stats)
        if not keep_gram:
            for acc in stats.inputs.values():
                acc.gram = None
        result[la.index] = stats

    layer_pass(model, anatomy, windows, calibrate, batch_size=batch_size, desc="calibration statistics")
    return CalibrationStats(layers=result, windows=int(windows.shape[0]), tokens_per_window=int(windows.shape[1]),
                            gram=gram and keep_gram, sites=tuple(sites), fingerprint=anatomy.fingerprint)


def ensure_statistics(model, anatomy: Anatomy, calibration, *, gram: bool = False,
                      sites: tuple[str, ...] = SITES, batch_size: int = 8) -> CalibrationStats:
    """``calibration`` as statistics: returned as is when it already is a :class:`CalibrationStats`
    with what is needed (so a method collects once and scores many units), else collected from the
    windows it holds."""
    if isinstance(calibration, CalibrationStats):
        if calibration.fingerprint and anatomy.fingerprint and calibration.fingerprint != anatomy.fingerprint:
            raise AmoebaError("these calibration statistics were collected on another model",
                              "collect them again on this model")
        if calibration.has(gram=gram, sites=sites):
            return calibration
        raise AmoebaError("the calibration statistics given lack what this metric needs "
                          f"(gram={gram}, sites={', '.join(sites)})",
                          "collect them with collect_statistics(..., gram=True) or pass the windows instead")
    if calibration is None:
        raise AmoebaError("this metric needs calibration data and none was given",
                          "pass a calibration source, e.g. --calibration sotu:train")
    return collect_statistics(model, anatomy, calibration, gram=gram, sites=sites, batch_size=batch_size)


__all__ = [
    "INPUT_SITE",
    "SITES",
    "CalibrationStats",
    "InputStats",
    "LayerStats",
    "collect_statistics",
    "ensure_statistics",
]
