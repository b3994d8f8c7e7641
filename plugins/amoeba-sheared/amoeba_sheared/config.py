"""Run settings shared by pruning and continued pre-training, checked when they are built (before
any model loads), so a bad value fails at once with the fix."""
from __future__ import annotations

from dataclasses import dataclass

from amoeba_plugin.options import Options, option

from .domains import DEFAULT_DOMAINS, parse_domains, parse_proportions
from .reference import parse_reference


def parse_domain_list(text: str) -> list[str]:
    """Domains written on one line: ``NAME=TRAIN,HELD_OUT;NAME=TRAIN,HELD_OUT`` (a spec holds a comma)."""
    return [part.strip() for part in text.split(";") if part.strip()]


@dataclass
class TrainConfig(Options):
    """The optimisation (Sheared's release settings for a 7B model on 8 GPUs in brackets)."""

    steps: int = option(200, "optimizer steps [3200 pruning, 48000 CPT]", ge=1)
    batch_size: int = option(8, "windows per process and micro-batch [4 pruning, 16 CPT per GPU]", ge=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1)
    seq_len: int = option(256, "tokens per training window [4096]", ge=2)
    lr: float = option(1e-4, "learning rate of the model weights (or LoRA) [1e-4]", gt=0)
    warmup: float = option(0.1, "fraction of steps of linear LR warm-up [0.1 pruning, 0.03 CPT]", ge=0, lt=1)
    min_lr_ratio: float = option(0.1, "cosine decay to this fraction of the peak [0.1]", ge=0, le=1)
    weight_decay: float = option(0.0, "AdamW weight decay [0]", ge=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm [1.0]", gt=0)
    save_every: int = option(50, "steps between checkpoints", ge=1)
    log_every: int = option(10, "steps between log lines", ge=1)
    seed: int = option(0, "seed of the masks, the data order and the sampling")


@dataclass
class DataConfig(Options):
    """The domains, their initial proportions, and dynamic batch loading."""

    domains: list[str] = option(list(DEFAULT_DOMAINS), "training domains, NAME=TRAIN_SOURCE,HELD_OUT_SOURCE each",
                                parse=parse_domain_list)
    proportions: list[float] | None = option(None, "initial proportions, one per domain (normalised); default "
                                                   "uniform (CPT after pruning: pruning's final ones)")
    dynamic: bool = option(True, "dynamic batch loading (false: constant proportions, the code's "
                                 "update_type=constant)")
    update_every: int = option(50, "steps between proportion updates [50 pruning, 400 CPT]", ge=1)
    reference: str = option("source", "reference losses: source, scaling:FILE.json, model:PATH or NAME=LOSS,...")
    heldout_windows: int = option(16, "held-out windows per domain for the updates [500 x 4096 tokens]", ge=1)
    eta: float = option(1.0, "step size of the proportion update", gt=0)
    smoothing: float = option(1e-4, "share of the uniform mixture mixed into every update", ge=0, lt=1)
    clip: bool = option(True, "the paper's max(l - l_ref, 0); false: the official code's unclipped gap")

    def __post_init__(self):
        super().__post_init__()
        specs = parse_domains(self.domains)
        self.domains = [str(s) for s in specs]
        self.proportions = parse_proportions(self.proportions, len(specs))
        parse_reference(self.reference)

    @property
    def specs(self):
        return parse_domains(self.domains)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]


#: continued pre-training's defaults where they differ from pruning's (Sheared's release: 3% warm-up,
#: proportions updated every 400 steps); `run.pretrain` and `amoeba sheared train` both use them
CPT_TRAIN_DEFAULTS = {"warmup": 0.03}
CPT_DATA_DEFAULTS = {"update_every": 400}


__all__ = ["CPT_DATA_DEFAULTS", "CPT_TRAIN_DEFAULTS", "DataConfig", "TrainConfig", "parse_domain_list"]
