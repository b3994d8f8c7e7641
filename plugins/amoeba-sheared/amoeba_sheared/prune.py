"""The pruning stage: weights (or LoRA, or nothing) and mask logits minimise LM loss plus the
Lagrangian; the multipliers maximise it, in one AdamW step.

Three param groups, as the official code has them: the weights at ``lr``, the mask logits at
``mask_lr`` and the Lagrange multipliers at ``lambda_lr`` with ``maximize=True`` (the official code
gives them a negative learning rate instead). The schedule (warm-up, cosine) scales all three, as
Composer's does. The target sparsity is warmed up linearly over ``target_warmup`` of the steps.
``weights="frozen"`` learns the masks alone; ``weights="lora"`` trains peft LoRA adapters on every
linear instead of the weights (merged before folding), for memory that cannot hold full training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amoeba_plugin.options import Options, option

from .masked import MaskedModel, inner_model
from .masks import Lagrangian, ShearingMasks
from .target import SHAPE_RULES, Shape, metric_scores, source_shape

WEIGHTS = ("full", "frozen", "lora")
MASK_INITS = ("paper", "importance")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class PruneOptions(Options):
    """What the pruning stage learns besides the weights' LR (official values in brackets)."""

    weights: str = option("full", "train the weights with the masks (full), freeze them (frozen), or train LoRA "
                                  "adapters instead (lora) [full]", choices=WEIGHTS)
    lora_rank: int = option(8, "rank of the LoRA adapters (weights=lora)", ge=1)
    lora_alpha: float = option(16.0, "alpha of the LoRA adapters (weights=lora)")
    mask_lr: float = option(1.0, "learning rate of the mask logits [1.0]", gt=0)
    lambda_lr: float = option(1.0, "learning rate of the Lagrange multipliers [1.0, as a negative lr]", gt=0)
    target_warmup: float = option(0.2, "fraction of steps the target sparsity ramps over [640 of 3200]", ge=0, le=1)
    mask_init: str = option("paper", "mask logits at the start: paper (every gate on, log_alpha ~ N(5, 0.01), "
                                      "the target ramped over target_warmup) or importance (the target's top units "
                                      "of init_metric on, the rest off; no ramp) [paper]", choices=MASK_INITS)
    init_metric: str = option("taylor", "host metric ranking the units for mask_init=importance (it must score "
                                        "every pruned family; taylor and magnitude score them all)",
                              registry="metrics")
    init_windows: int = option(8, "calibration windows the init metric reads (mask_init=importance)", ge=1)
    shape_rule: str = option("fill", "how a parameter budget becomes a target shape: fill (within 2 % below the "
                                     "budget, the most balanced widths) or nearest (one width factor snapped "
                                     "down; can land far below)", choices=SHAPE_RULES)


def _lora(model, anatomy, options: PruneOptions):
    from peft import LoraConfig, get_peft_model

    suffixes = sorted({anatomy.layers[0].modules[r].rsplit(".", 1)[-1] for r in LORA_TARGETS})
    config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=0.0,
                        target_modules=suffixes, bias="none")
    return get_peft_model(model, config)


class PruningStage:
    """Masks on ``model`` for pruning to ``target``; what :func:`amoeba_sheared.trainer.train` trains."""

    kind = "pruning"

    def __init__(self, model, anatomy, target: Shape, options: PruneOptions, train_steps: int, seed: int = 0,
                 calibration: torch.Tensor | None = None):
        self.anatomy, self.target, self.options = anatomy, target, options
        model.float()
        self.masks = ShearingMasks(source_shape(anatomy), target, anatomy.layers[0].head_dim, seed)
        self.warmup_steps = int(round(options.target_warmup * train_steps))
        if options.mask_init == "importance":  # scored on the dense model, before any adapter wraps it
            windows = None if calibration is None else calibration[: options.init_windows]
            scores = metric_scores(model, anatomy, options.init_metric, windows, self.masks.families)
            self.masks.init_from_scores(scores)
            self.warmup_steps = 0  # the masks start at the target: no ramp from 0
        if options.weights != "full":
            model.requires_grad_(False)
        if options.weights == "lora":
            model = _lora(model, anatomy, options)
        self.lagrangian = Lagrangian(self.masks.families)
        self.module = MaskedModel(model, anatomy, self.masks)
        self._last: dict = {}

    # ------------------------------------------------------------------ optimisation
    def weights(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.module.model.named_parameters() if p.requires_grad]

    def param_groups(self, train) -> list[dict]:
        lambdas = list(self.lagrangian.parameters())
        groups = [{"params": [p for _, p in self.weights()], "lr": train.lr},
                  {"params": list(self.masks.parameters()), "lr": self.options.mask_lr},
                  {"params": lambdas, "lr": self.options.lambda_lr, "maximize": True}]
        return [g for g in groups if g["params"]]

    def minimised(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.weights()] + list(self.masks.parameters())

    def regulariser(self, expected: dict, step: int) -> torch.Tensor:
        target = self.masks.target_at(step, self.warmup_steps)
        lag = self.lagrangian(expected, target)
        self._last = {"lagrangian": round(float(lag.detach()), 6),
                      "target_sparsity": {f: round(t, 5) for f, t in target.items()},
                      "expected_sparsity": {f: round(s.detach().mean().item(), 5) for f, s in expected.items()}}
        return lag

    def after_step(self) -> None:
        self.masks.clamp_()

    def eval_forward(self):
        """The masked model at the current expected size (deterministic gates), for held-out losses."""
        self.module.eval()
        self.module.exact = False
        return lambda x: self.module(x)[0]

    def log_record(self, step: int) -> dict:
        return {**self._last, "lambda": self.lagrangian.values(),
                "expected_parameters": round(self.masks.expected_parameters())}

    # ------------------------------------------------------------------ checkpoints
    def trainable(self) -> dict[str, torch.Tensor]:
        out = {f"weights.{n}": p for n, p in self.weights()}
        out.update({f"masks.{n}": p for n, p in self.masks.named_parameters()})
        out.update({f"lagrangian.{n}": p for n, p in self.lagrangian.named_parameters()})
        return out


    # ------------------------------------------------------------------ the end
    def final_model(self):
        """The hooks removed and LoRA merged: the plain model the deterministic gates fold into."""
        self.module.detach()
        model = self.module.model
        if self.options.weights == "lora":
            model = model.merge_and_unload()
        model = inner_model(model)
        model.requires_grad_(False)
        return model.eval()


__all__ = ["LORA_TARGETS", "MASK_INITS", "PruneOptions", "PruningStage", "WEIGHTS"]
