"""The continued pre-training stage: plain next-token loss on the same domain mixture (dynamic
batch loading on), every weight trained. What :func:`amoeba_sheared.trainer.train` trains."""
from __future__ import annotations

import torch



class _LM(torch.nn.Module):
    """What DDP wraps: the model, returning ``(logits, None)`` like the masked model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, generator=None):
        return self.model(input_ids=input_ids, use_cache=False).logits, None


class PretrainingStage:
    kind = "pretraining"

    def __init__(self, model):
        model.float().requires_grad_(True)
        self.module = _LM(model)

    def param_groups(self, train) -> list[dict]:
        return [{"params": self.minimised(), "lr": train.lr}]

    def minimised(self) -> list[torch.nn.Parameter]:
        return list(self.module.model.parameters())

    def regulariser(self, extra, step: int):
        return 0.0

    def after_step(self) -> None:
        pass

    def eval_forward(self):
        self.module.eval()
        return lambda x: self.module.model(input_ids=x, use_cache=False).logits

    def log_record(self, step: int) -> dict:
        return {}

    def trainable(self) -> dict[str, torch.Tensor]:
        return dict(self.module.model.named_parameters())


    def final_model(self):
        return self.module.model.eval()


__all__ = ["PretrainingStage"]
