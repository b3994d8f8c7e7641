"""Removal loss: measure what removing each unit costs, one unit at a time (SLEB / Shortened LLaMA)."""
from __future__ import annotations

import torch

from . import Metric
from .loss import check_windows, lm_loss


class RemovalLossMetric(Metric):
    """Calibration loss with the unit removed minus the loss of the full model.

    The unit is removed with soft surgery (a skipped layer, a masked KV group), which computes
    exactly what the sliced model would. One forward pass over the windows per unit, so it is the
    most faithful and the most expensive metric: ``layer`` costs ``num_layers`` passes, ``kv_group``
    one pass per group of every layer, ``query_head`` one per head. ``max_windows`` caps the windows used (default: all).
    Shortened LLaMA ranks layers by this loss increase ("PPL criterion"); SLEB applies it
    iteratively, which a method can do by calling it again on the pruned model.
    """

    name = "removal-loss"
    description = "loss increase when a layer, KV group or query head is removed (SLEB / Shortened LLaMA); needs calibration"
    source = ("Kim et al., 'Shortened LLaMA' (2024), PPL criterion; Song et al., 'SLEB: Streamlining LLMs "
              "through Redundancy Verification and Elimination of Transformer Blocks' (ICML 2024)")
    units = frozenset({"layer", "kv_group", "query_head"})
    needs_calibration = True

    def score(self, model, anatomy, unit, calibration=None, max_windows: int | None = None,
              batch_size: int = 8, **options):
        from ..plan import LayerPlan, Plan
        from ..progress import progress
        from ..surgery import apply_soft

        self.check_unit(unit)
        self.check_calibration(calibration)
        windows = check_windows(calibration, self.name)
        if max_windows is not None:
            windows = windows[:max_windows]
        was_training = model.training
        model.eval()
        try:
            base = lm_loss(model, windows, batch_size)
            full = Plan.full(anatomy)

            def cost(plan: Plan) -> float:
                with apply_soft(model, anatomy, plan):
                    return lm_loss(model, windows, batch_size) - base

            if unit == "layer":
                return torch.tensor([cost(Plan([lp for lp in full.layers if lp.index != layer.index], full.source))
                                     for layer in progress(anatomy.layers, "removal loss (layers)")])
            if unit == "query_head":
                return [torch.tensor([self._head_cost(model, layer, h, windows, batch_size) - base
                                      for h in range(layer.num_query_heads)], dtype=torch.float32)
                        for layer in progress(anatomy.layers, "removal loss (query heads)")]
            scores = []
            for layer in progress(anatomy.layers, "removal loss (KV groups)"):
                per_group = []
                for g in range(layer.num_kv_groups):
                    kept = [k for k in range(layer.num_kv_groups) if k != g]
                    lp = LayerPlan(layer.index, kv_groups=kept,
                                   query_heads=[list(range(layer.queries_per_group)) for _ in kept])
                    plan = Plan([lp if p.index == layer.index else p for p in full.layers], full.source)
                    per_group.append(cost(plan))
                scores.append(torch.tensor(per_group, dtype=torch.float32))
            return scores
        finally:
            model.train(was_training)

    @staticmethod
    def _head_cost(model, layer, head: int, windows, batch_size: int) -> float:
        """Loss with one query head removed. A plan keeps equal heads per KV group, so one head alone
        is removed by zeroing its o_proj input columns, which is exactly what dropping it computes."""
        lo, hi = head * layer.head_dim, (head + 1) * layer.head_dim

        def zero(module, args):
            x = args[0].clone()
            x[..., lo:hi] = 0
            return (x,)

        handle = model.get_submodule(layer.modules["o"]).register_forward_pre_hook(zero)
        try:
            return lm_loss(model, windows, batch_size)
        finally:
            handle.remove()


__all__ = ["RemovalLossMetric"]
