"""Training text for recovery: one source or a mixture of domains, and dynamic batch loading.

A domain is one training text (``sotu:train``, ``file:PATH``, ...) cut into non-overlapping windows.
With several domains every window of a batch picks its domain independently with the current
proportions and takes that domain's next window (each domain's windows in a seeded order per epoch).
:meth:`DomainBatches.draw` is a pure function of (seed, step, cursors, proportions), and its state
(cursors, proportions) goes into every checkpoint, so a resumed run draws exactly the batches the
uninterrupted one would have.

Dynamic batch loading (Sheared-LLaMA, Xia et al. 2023): every few steps each domain's held-out loss
``l`` is measured and :func:`update_proportions` moves data towards the domains that are furthest
above their reference loss:

    delta = max(l - l_ref, 0)          (the paper's Algorithm 1; clip=False gives the code's unclipped gap)
    alpha = w * exp(eta * delta)       (exponentiated update; eta = 1)
    w'    = (1 - c) * alpha / sum(alpha) + c / k     (the code's smoothing, c = 1e-4)

so domains still above their reference get more data, and none is ever starved completely. This is
the one copy of that update: the Sheared backend imports it from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import TextSpec, source_tokens, spec_of
from ..errors import DataError


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


def parse_sources(text: str | list[str]) -> list[str]:
    """The training specs of ``source``: one spec, or several separated by commas."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    specs = [str(s).strip() for s in items if str(s).strip()]
    if not specs:
        raise DataError("recovery has no training text", "pass source=sotu:train (or several specs, comma-separated)")
    return specs


def training_specs(text: str | list[str]) -> list[TextSpec]:
    """Each training spec resolved once; refuses held-out (evaluation-only) splits and repeats."""
    out, seen = [], {}
    for spec in parse_sources(text):
        resolved = TextSpec.resolve(spec, "calibration")
        source, split = resolved.source, resolved.split
        if source.role(split) != "train":
            usable = [spec_of(source, s) for s in source.split_names() if source.role(s) == "train"]
            raise DataError(f"'{resolved}' is held out for evaluation and may not be trained on",
                            f"train on {' or '.join(usable)}" if usable else
                            "train on a training split, e.g. sotu:train, or your own text with file:PATH")
        if resolved.key in seen:
            raise DataError(f"the training text '{resolved}' is named twice ({seen[resolved.key]}, {spec})",
                            "name every training source once (use proportions= to weight them)")
        seen[resolved.key] = spec
        out.append(resolved)
    return out


def check_heldout(training: list[TextSpec], evaluation: TextSpec | None) -> None:
    """Refuse held-out text that is one of the training texts (its loss would flatter the recovery)."""
    if evaluation is None:
        return
    for spec in training:
        if spec.key == evaluation.key:
            held = [spec_of(evaluation.source, s) for s in evaluation.source.split_names()
                    if evaluation.source.role(s) != "train"]
            raise DataError(f"eval_source '{evaluation}' is also training text of this recovery ('{spec}'): "
                            "its held-out loss would measure memorisation, not recovery",
                            f"pass a held-out eval_source ({', '.join(held) or 'e.g. sotu:validation, brown:test'}), "
                            "or eval_source=none")


@dataclass
class Domain:
    """One training text as windows: ``train`` ``[n, seq_len]`` and ``heldout`` (the tail of the same
    text, cut off before ``train`` so training never reads it; empty unless the mixture needs it)."""

    name: str
    train: torch.Tensor
    heldout: torch.Tensor


def load_domains(tokenizer, specs: list[TextSpec], seq_len: int, heldout_windows: int = 0) -> list[Domain]:
    """Tokenize every training text once and cut it into windows; the last ``heldout_windows`` windows
    of each are kept back for the mixture's per-domain losses."""
    domains = []
    for spec in specs:
        ids = source_tokens(tokenizer, spec.source, spec.split)
        n = ids.numel() // seq_len
        if n < heldout_windows + 1:
            raise DataError(f"'{spec}' has {ids.numel():,} tokens, too few for {heldout_windows + 1} windows of "
                            f"{seq_len}", "use more text or a shorter seq_len")
        windows = ids[: n * seq_len].view(n, seq_len)
        cut = n - heldout_windows
        domains.append(Domain(str(spec), windows[:cut].clone(), windows[cut:].clone()))
    return domains


class DomainBatches:
    """Global batches of ``batch_size`` windows mixed from ``domains`` with mutable proportions."""

    def __init__(self, domains: list[Domain], batch_size: int, seed: int = 0, proportions=None):
        self.domains, self.batch_size, self.seed = domains, int(batch_size), int(seed)
        k = len(domains)
        p = torch.full((k,), 1.0 / k, dtype=torch.float64) if proportions is None else \
            torch.as_tensor(proportions, dtype=torch.float64)
        self.proportions = p / p.sum()
        self.cursors = [0] * k
        self._orders: dict[int, tuple[int, torch.Tensor]] = {}

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def set_proportions(self, values) -> None:
        p = torch.as_tensor(values, dtype=torch.float64)
        self.proportions = p / p.sum()

    def _order(self, domain: int, epoch: int) -> torch.Tensor:
        cached = self._orders.get(domain)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 7_919 + domain * 104_729 + epoch)
            cached = (epoch, torch.randperm(len(self.domains[domain].train), generator=g))
            self._orders[domain] = cached
        return cached[1]

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(windows [batch_size, seq_len], domain ids [batch_size])`` of optimizer step ``step``."""
        if len(self.domains) == 1:
            ids = torch.zeros(self.batch_size, dtype=torch.long)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            ids = torch.multinomial(self.proportions.float(), self.batch_size, replacement=True, generator=g)
        rows = []
        for d in ids.tolist():
            n = len(self.domains[d].train)
            epoch, offset = divmod(self.cursors[d], n)
            rows.append(self.domains[d].train[int(self._order(d, epoch)[offset])])
            self.cursors[d] += 1
        return torch.stack(rows), ids

    def state_dict(self) -> dict:
        return {"cursors": list(self.cursors), "proportions": self.proportions.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.cursors = [int(c) for c in state["cursors"]]
        self.set_proportions(state["proportions"])


__all__ = ["Domain", "DomainBatches", "check_heldout", "load_domains", "parse_sources", "training_specs",
           "update_proportions"]
