"""First-order Taylor importance: the loss change a weight's removal would cause, to first order."""
from __future__ import annotations

import torch

from .linear import LinearMetric, present, weight
from .loss import check_windows, lm_loss
from .units import COLUMN_ROLES, ROW_ROLES


class TaylorMetric(LinearMetric):
    """``|W_ij * dL/dW_ij|`` summed over a unit's weights (LLM-Pruner's element-wise first-order
    importance with sum aggregation), ``L`` the mean next-token loss on the calibration windows.

    Needs one forward and backward pass over the calibration windows and a gradient the size of the
    scored weights; the model's own ``requires_grad`` flags and ``.grad`` are restored afterwards.
    ``layer`` scores sum every linear weight of the layer.
    """

    name = "taylor"
    description = "first-order Taylor |W·dL/dW| (LLM-Pruner); needs calibration and gradients"
    source = "Ma et al., 'LLM-Pruner: On the Structural Pruning of LLMs' (NeurIPS 2023), element-wise first order"
    units = frozenset({"mlp_channel", "query_head", "kv_group", "head_channel", "hidden_channel", "layer"})
    needs_calibration = True
    needs_gradients = True

    def prepare(self, model, anatomy, calibration, batch_size: int = 4, **options):
        windows = check_windows(calibration, self.name)
        names = [layer.modules[role] for layer in anatomy.layers for role in ROW_ROLES + COLUMN_ROLES
                 if present(layer, role)] + [anatomy.embed] + ([] if anatomy.tied_embeddings else [anatomy.lm_head])
        targets = {name: model.get_submodule(name).weight for name in names}
        saved = {p: (p.requires_grad, p.grad) for p in model.parameters()}
        was_training = model.training
        try:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
                p.grad = None
            for p in targets.values():
                p.requires_grad_(True)
            lm_loss(model, windows, batch_size, backward=True)
            grads = {name: p.grad.detach().float() for name, p in targets.items()}
        finally:
            for p, (flag, grad) in saved.items():
                p.requires_grad_(flag)
                p.grad = grad
            model.train(was_training)
        return grads

    def saliency(self, model, layer, role, grads, **options):
        name = layer.modules[role]
        return (weight(model, name) * grads[name]).abs()

    def hidden_extra(self, model, anatomy, grads, **options):
        score = (weight(model, anatomy.embed) * grads[anatomy.embed]).abs().sum(0)
        if not anatomy.tied_embeddings:
            score = score + (weight(model, anatomy.lm_head) * grads[anatomy.lm_head]).abs().sum(0)
        return score

    def layer_scores(self, model, anatomy, grads, **options):
        return torch.tensor([sum(float(self.saliency(model, layer, role, grads).sum(dtype=torch.float64))
                                 for role in ROW_ROLES + COLUMN_ROLES if present(layer, role))
                             for layer in anatomy.layers])


__all__ = ["TaylorMetric"]
