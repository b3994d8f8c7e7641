"""What a recovery run does, as typed options (so ``--recover tokens=N,loss=lm`` and
``PruningConfig.recovery`` parse with the same kit as method options)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import AmoebaError
from ..options import Options, build_options, option

LOSSES = ("distill", "lm", "mixed")
SCHEDULES = ("cosine", "linear", "constant")
#: the learning rates used when ``lr`` is not given (see docs/recovery.md for the check that chose them)
DEFAULT_LR_FULL = 3e-4
DEFAULT_LR_LORA = 3e-3
#: settings a resumed run may change (they do not change the numbers)
RESUMABLE = frozenset({"save_every", "log_every"})


@dataclass
class RecoveryConfig(Options):
    """Healing a pruned model: logit distillation from its source model (Minitron's finding: KL to the
    teacher beats the plain LM loss after pruning), the LM loss, or a mix, on held-in text only."""

    tokens: int = option(help="training tokens (rounded up to whole batches of batch_size x seq_len)", gt=0)
    loss: str = option("distill", "distill: KL to the teacher's logits; lm: next-token loss (no teacher); "
                                  "mixed: (1 - lm_weight) * distill + lm_weight * lm", choices=LOSSES)
    lm_weight: float = option(0.5, "share of the LM loss when loss=mixed", ge=0, le=1)
    temperature: float = option(1.0, "distillation temperature (the KL is scaled by T^2)", gt=0)
    source: str = option("sotu:train", "training text: one spec, or a comma-separated domain mixture "
                                       "(e.g. sotu:train,file:notes.txt); training splits only")
    proportions: list[float] | None = option(None, "initial mixture proportions, one per source (normalised); "
                                                   "default uniform")
    dynamic: bool = option(True, "dynamic batch loading for a mixture (Sheared): proportions follow each "
                                 "domain's held-out loss gap to the teacher's")
    update_every: int = option(0, "tokens between mixture updates (0: at every evaluation, or 4 times a run)", ge=0)
    mixture_windows: int = option(4, "windows held back at the end of each mixture domain for its loss", ge=1)
    seq_len: int = option(256, "tokens per training window", ge=2)
    batch_size: int = option(4, "windows per optimizer step, all processes together", ge=1)
    lr: float | None = option(None, f"peak learning rate (default {DEFAULT_LR_FULL:g} for full weights, "
                                    f"{DEFAULT_LR_LORA:g} with LoRA)", gt=0)
    warmup: float = option(0.05, "fraction of the steps of linear LR warm-up", ge=0, lt=1)
    schedule: str = option("cosine", "LR decay after warm-up", choices=SCHEDULES)
    min_lr_ratio: float = option(0.1, "the decay ends at this fraction of the peak", ge=0, le=1)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", ge=0)
    lora_rank: int = option(0, "0: train every weight; > 0: peft LoRA of this rank on every linear projection, "
                               "merged into the weights at the end", ge=0)
    lora_alpha: float | None = option(None, "LoRA alpha (default 2 x lora_rank)", gt=0)
    eval_source: str | None = option("sotu:validation", "held-out text for the running loss (none: off); "
                                                        "must not be training text")
    eval_windows: int = option(8, "held-out windows of seq_len tokens per evaluation", ge=1)
    eval_every: int = option(0, "tokens between held-out evaluations (0: only before and after)", ge=0)
    save_every: int = option(0, "tokens between checkpoints when run_dir is given (0: at every evaluation, "
                                "else 4 times a run; always at the end)", ge=0)
    log_every: int = option(1, "optimizer steps between log records", ge=1)
    seed: int = option(0, "seed of the data order, the mixture draws and dropout", ge=0)

    def __post_init__(self):
        super().__post_init__()
        from .mixture import parse_sources

        specs = parse_sources(self.source)
        self.source = ",".join(specs)
        if self.eval_source is not None and self.eval_source.strip().lower() in ("", "none", "null", "off"):
            self.eval_source = None
        if self.proportions is not None:
            if len(self.proportions) != len(specs) or any(p < 0 for p in self.proportions) or sum(self.proportions) <= 0:
                raise AmoebaError(f"proportions {self.proportions} do not give one non-negative weight to each of "
                                  f"the {len(specs)} sources", f"pass {len(specs)} numbers, e.g. "
                                  f"proportions={','.join(['1'] * len(specs))}")
            total = sum(self.proportions)
            self.proportions = [p / total for p in self.proportions]

    # ------------------------------------------------------------------ derived settings
    @property
    def sources(self) -> list[str]:
        return self.source.split(",")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        """Optimizer steps: ``tokens`` rounded up to whole batches."""
        return -(-self.tokens // self.tokens_per_step)

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR_LORA if self.lora_rank else DEFAULT_LR_FULL

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "lm"

    def every(self, tokens: int) -> int:
        """A token interval as optimizer steps (0 stays 0)."""
        return 0 if not tokens else max(1, round(tokens / self.tokens_per_step))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return super().to_dict()

    @classmethod
    def from_dict(cls, data) -> RecoveryConfig:
        """A config from a mapping (JSON, ``PruningConfig.recovery``), refusing unknown keys."""
        return coerce(data)

    def differences(self, other: RecoveryConfig) -> list[str]:
        """Names of the settings that differ from ``other`` and would change the numbers."""
        return [f.name for f in fields(self) if f.name not in RESUMABLE
                and getattr(self, f.name) != getattr(other, f.name)]


def coerce(value) -> RecoveryConfig:
    """A :class:`RecoveryConfig` from an instance, a mapping or ``--recover`` text (``tokens=N,loss=lm``)."""
    if isinstance(value, RecoveryConfig):
        return value
    if isinstance(value, str):
        value = parse_pairs(value)
    if not isinstance(value, dict):
        raise AmoebaError(f"recovery must be a RecoveryConfig, a mapping or 'tokens=N,...' text, got "
                          f"{type(value).__name__}", "pass e.g. recovery={'tokens': 65536}")
    if "tokens" not in value:
        raise AmoebaError("recovery needs a token budget", "pass tokens=N, e.g. --recover tokens=65536")
    return build_options(RecoveryConfig, value, method="recovery")


def parse_pairs(text: str) -> dict:
    """``tokens=65536,loss=lm,source=sotu:train,file:x.txt`` as a dict: a comma-separated piece without
    ``=`` continues the previous value (a mixture of sources, a list of proportions)."""
    import json

    out: dict = {}
    last = None
    for piece in str(text).split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if sep and key.strip() and ":" not in key and "/" not in key:
            last = key.strip()
            out[last] = value.strip()
        elif last is not None:
            out[last] = f"{out[last]},{piece}"
        else:
            raise AmoebaError(f"cannot read '{piece}' in --recover '{text}'", "write key=value pairs, e.g. "
                              "--recover tokens=65536,loss=lm")
    for key, value in out.items():
        if "," not in value:
            try:
                out[key] = json.loads(value)
            except ValueError:
                pass
    return out


__all__ = ["DEFAULT_LR_FULL", "DEFAULT_LR_LORA", "LOSSES", "RESUMABLE", "RecoveryConfig", "SCHEDULES", "coerce",
           "parse_pairs"]
