"""Training domains and the multi-domain stream that dynamic batch loading steers.

A domain is a name, a training text source and a held-out one (``sotu=sotu:train,sotu:validation``).
The shipped Brown corpus and Moby-Dick are evaluation-only in the host; to train on them as domains
this plugin registers document-level splits of them (``brown-split``, ``moby-dick-split``: every
10th document held out, as the SOTU split holds out every 10th address), so their held-out part is
never trained on.

:class:`DomainMixture` is an ``IterableDataset`` of global batches: every sample picks its domain
independently with the current proportions (a shared, mutable tensor the trainer updates between
steps) and takes that domain's next window (each domain's windows in a seeded order per epoch). Its
state (per-domain cursors, proportions) is part of every checkpoint, so a resumed run draws exactly
the batches the uninterrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset

from amoeba_plugin.data import TextSource, resolve_source, source_tokens, spec_of
from amoeba_plugin.errors import DataError

#: the three real domains shipped with the host (speeches 1790-2021, 1961 American prose, an 1851 novel)
DEFAULT_DOMAINS = ("sotu=sotu:train,sotu:validation", "brown=brown-split:train,brown-split:validation",
                   "moby-dick=moby-dick-split:train,moby-dick-split:validation")
_DOMAIN_FIX = "write NAME=TRAIN_SOURCE,HELD_OUT_SOURCE, e.g. sotu=sotu:train,sotu:validation"


def document_split(name: str, base: str, description: str, every: int = 10, offset: int = 5) -> TextSource:
    """``base``'s documents split into ``train`` and ``validation`` (document ``i`` is held out when
    ``i % every == offset``)."""

    def part(held_out: bool):
        def load():
            source, split = resolve_source(base, purpose="evaluation")
            return [d for i, d in enumerate(source.documents(split)) if (i % every == offset) == held_out]
        return load

    return TextSource(name, description, {"train": part(False), "validation": part(True)}, train_splits=("train",),
                      licence="as the base corpus", origin=f"document split of {base}", key=f"{name}:{every}:{offset}")


def split_sources() -> list[TextSource]:
    return [document_split("brown-split", "brown", "Brown corpus, every 10th sample held out (for training on it)"),
            document_split("moby-dick-split", "moby-dick", "Moby-Dick, every 10th chapter held out (for training on it)")]


@dataclass(frozen=True)
class DomainSpec:
    name: str
    train: str
    heldout: str

    @classmethod
    def parse(cls, text: str) -> DomainSpec:
        name, sep, rest = str(text).partition("=")
        parts = [p.strip() for p in rest.split(",")]
        if not sep or not name.strip() or len(parts) != 2 or not all(parts):
            raise DataError(f"cannot read the domain '{text}'", _DOMAIN_FIX)
        return cls(name.strip(), parts[0], parts[1])

    def check(self) -> DomainSpec:
        """Both sources resolve; the training one is a train split, the held-out one is not the same text."""
        train, tsplit = resolve_source(self.train, purpose="calibration")
        held, hsplit = resolve_source(self.heldout, purpose="evaluation")
        if train.role(tsplit) != "train":
            raise DataError(f"domain '{self.name}': '{spec_of(train, tsplit)}' is held out for evaluation and may not "
                            "be trained on", "use a training split (brown-split:train and moby-dick-split:train "
                            "split the evaluation-only corpora by document)")
        if (train.key or train.name, tsplit) == (held.key or held.name, hsplit):
            raise DataError(f"domain '{self.name}' trains and evaluates on the same text '{self.train}'",
                            "give a held-out split as the second source, e.g. sotu:validation")
        return self

    def __str__(self) -> str:
        return f"{self.name}={self.train},{self.heldout}"


def parse_domains(items) -> list[DomainSpec]:
    specs = [s if isinstance(s, DomainSpec) else DomainSpec.parse(s) for s in (items or DEFAULT_DOMAINS)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"domain names repeat ({', '.join(names)})", "give every domain its own name")
    return [s.check() for s in specs]


def parse_proportions(text, k: int) -> list[float] | None:
    """``"0.5,0.25,0.25"`` (normalised) or None (uniform)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise DataError(f"cannot read the proportions '{text}'", "write one number per domain, e.g. 0.5,0.25,0.25") from None
    if len(values) != k or any(v < 0 for v in values) or sum(values) <= 0:
        raise DataError(f"proportions {values} do not give one non-negative weight to each of the {k} domains",
                        f"write {k} non-negative numbers, e.g. {','.join(['1'] * k)}")
    return [v / sum(values) for v in values]


@dataclass
class Domain:
    """A domain's token windows: ``train`` ``[n, seq_len]`` (non-overlapping) and ``heldout``."""

    name: str
    train: torch.Tensor
    heldout: torch.Tensor


def _windows(tokenizer, spec: str, purpose: str, seq_len: int, limit: int | None, domain: str) -> torch.Tensor:
    source, split = resolve_source(spec, purpose=purpose)
    ids = source_tokens(tokenizer, source, split)
    n = ids.numel() // seq_len if limit is None else min(limit, ids.numel() // seq_len)
    if n < 1:
        raise DataError(f"domain '{domain}': '{spec}' has {ids.numel()} tokens, not one window of {seq_len}",
                        "use more text or a shorter --seq-len")
    return ids[: n * seq_len].view(n, seq_len).clone()


def load_domains(tokenizer, specs: list[DomainSpec], seq_len: int, heldout_windows: int) -> list[Domain]:
    """Tokenize every domain once: all training windows, the first ``heldout_windows`` held-out ones."""
    return [Domain(s.name, _windows(tokenizer, s.train, "calibration", seq_len, None, s.name),
                   _windows(tokenizer, s.heldout, "evaluation", seq_len, heldout_windows, s.name)) for s in specs]


class DomainMixture(IterableDataset):
    """Global batches of ``batch_size`` windows mixed from ``domains`` with mutable proportions.

    ``proportions`` lives in shared memory, so a change (:meth:`set_proportions`) reaches every
    reader. ``draw(step)`` is a pure function of (seed, step, cursors, proportions) and advances the
    cursors; iterating draws step after step from :attr:`step`."""

    def __init__(self, domains: list[Domain], batch_size: int, seed: int = 0, proportions=None):
        self.domains, self.batch_size, self.seed = domains, batch_size, int(seed)
        k = len(domains)
        p = torch.full((k,), 1.0 / k, dtype=torch.float64) if proportions is None else torch.tensor(
            proportions, dtype=torch.float64)
        self.proportions = (p / p.sum()).share_memory_()
        self.cursors = [0] * k
        self.step = 0
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def set_proportions(self, values) -> None:
        self.proportions.copy_(torch.as_tensor(values, dtype=torch.float64))

    def _order(self, domain: int, epoch: int) -> torch.Tensor:
        key = (domain, epoch)
        if key not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 7_919 + domain * 104_729 + epoch)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != domain}
            self._orders[key] = torch.randperm(len(self.domains[domain].train), generator=g)
        return self._orders[key]

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(windows [batch_size, seq_len], domain ids [batch_size])`` of optimizer step ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        ids = torch.multinomial(self.proportions.float(), self.batch_size, replacement=True, generator=g)
        rows = []
        for d in ids.tolist():
            n = len(self.domains[d].train)
            epoch, offset = divmod(self.cursors[d], n)
            rows.append(self.domains[d].train[int(self._order(d, epoch)[offset])])
            self.cursors[d] += 1
        self.step = step + 1
        return torch.stack(rows), ids

    def __iter__(self):
        while True:
            yield self.draw(self.step)

    def state_dict(self) -> dict:
        return {"cursors": list(self.cursors), "proportions": self.proportions.tolist(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.cursors = [int(c) for c in state["cursors"]]
        self.set_proportions(state["proportions"])
        self.step = int(state["step"])


__all__ = ["DEFAULT_DOMAINS", "Domain", "DomainMixture", "DomainSpec", "document_split", "load_domains",
           "parse_domains", "parse_proportions", "split_sources"]
