"""Run settings shared by pruning and continued pre-training, checked when they are built (before
any model loads), so a bad value fails at once with the fix."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from amoeba_plugin.errors import AmoebaError

from .domains import DEFAULT_DOMAINS, parse_domains, parse_proportions
from .reference import parse_reference


def _positive_int(owner, *names):
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AmoebaError(f"{name} must be a positive integer, got {value!r}", f"set {name} to 1 or more")


@dataclass
class TrainConfig:
    """The optimisation (Sheared's release settings for a 7B model on 8 GPUs in brackets)."""

    steps: int = 200                # optimizer steps [3200 pruning, 48000 CPT]
    batch_size: int = 8             # windows per process and micro-batch [4 pruning, 16 CPT per GPU]
    grad_accum: int = 1
    seq_len: int = 256              # [4096]
    lr: float = 1e-4                # the model weights (or LoRA) [1e-4]
    warmup: float = 0.1             # fraction of steps of linear LR warm-up [0.1 pruning, 0.03 CPT]
    min_lr_ratio: float = 0.1       # cosine decay to this fraction of the peak [0.1]
    weight_decay: float = 0.0       # [0]
    max_grad_norm: float = 1.0      # [1.0]
    save_every: int = 50
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        _positive_int(self, "steps", "batch_size", "grad_accum", "save_every", "log_every")
        if self.seq_len < 2 or self.lr <= 0 or not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise AmoebaError("seq_len must be >= 2, lr > 0, warmup in [0, 1) and min_lr_ratio in [0, 1]",
                              "use e.g. --seq-len 256 --lr 1e-4 --warmup 0.1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataConfig:
    """The domains, their initial proportions, and dynamic batch loading."""

    domains: list[str] = field(default_factory=lambda: list(DEFAULT_DOMAINS))
    proportions: list[float] | None = None     # initial; None: uniform (CPT after pruning: pruning's final ones)
    dynamic: bool = True                       # False: constant proportions (the code's update_type=constant)
    update_every: int = 50                     # steps between updates [50 pruning, 400 CPT]
    reference: str = "source"                  # see amoeba_sheared.reference
    heldout_windows: int = 16                  # held-out windows per domain for the update [500 x 4096 tokens]
    eta: float = 1.0
    smoothing: float = 1e-4
    clip: bool = True                          # the paper's max(l - l_ref, 0); False: the code's raw gap

    def __post_init__(self):
        specs = parse_domains(self.domains)
        self.domains = [str(s) for s in specs]
        self.proportions = parse_proportions(self.proportions, len(specs))
        _positive_int(self, "update_every", "heldout_windows")
        if not 0 <= self.smoothing < 1 or self.eta <= 0:
            raise AmoebaError("smoothing must be in [0, 1) and eta > 0", "use the defaults (1e-4, 1.0)")
        parse_reference(self.reference)

    @property
    def specs(self):
        return parse_domains(self.domains)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["DataConfig", "TrainConfig"]
