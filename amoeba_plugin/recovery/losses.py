"""The recovery objectives: logit distillation to the source model, the LM loss, or a mix.

Minitron (Muralidharan et al. 2024; Sreenivas et al. 2024) heals pruned models with the forward KL
between the teacher's and the student's next-token distributions over the whole vocabulary, and
finds it recovers more per token than the plain next-token loss: the teacher's full distribution
carries far more signal per position than one label, and it pulls the student back towards the
function it was cut from rather than towards the (small) training text.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts token t + 1."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), input_ids[:, 1:].reshape(-1))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-position KL(teacher || student) of the softened distributions, times T^2 (Hinton et al.:
    keeps the gradient scale independent of T). Zero when the student matches the teacher."""
    t = float(temperature)
    s = F.log_softmax(student.float() / t, -1)
    p = F.log_softmax(teacher.float() / t, -1)
    kl = F.kl_div(s.reshape(-1, s.size(-1)), p.reshape(-1, p.size(-1)), log_target=True, reduction="batchmean")
    return kl * (t * t)


def objective(loss: str, student: torch.Tensor, teacher: torch.Tensor | None, input_ids: torch.Tensor,
              temperature: float = 1.0, lm_weight: float = 0.5) -> tuple[torch.Tensor, dict]:
    """The training loss named ``loss`` and its parts (floats, for the log)."""
    ce = lm_loss(student, input_ids)
    if loss == "lm":
        return ce, {"lm_loss": float(ce.detach())}
    kd = distill_loss(student, teacher, temperature)
    parts = {"lm_loss": float(ce.detach()), "distill_loss": float(kd.detach())}
    if loss == "distill":
        return kd, parts
    return (1 - lm_weight) * kd + lm_weight * ce, parts


__all__ = ["distill_loss", "lm_loss", "objective"]
