"""``amoeballm`` as a method of the common pruning API: stage 1 only (no fine-tuning).

``amoeba prune MODEL --method amoeballm --budget nonembed=0.6`` builds the selection table in
memory and returns the best subnet under the budget, scored by calibration loss. With
``fill="width"`` (the default) every depth of the DP table is filled to the budget with the width
ranking (to one unit's precision, so the plan lands within 2% under the budget) and the depth whose
filled plan has the lowest calibration loss wins; ``fill="none"`` picks from the (depth, width
ratio) grid as the paper's extraction does. The one-for-all bundle (selection, SMoL fine-tuning,
extraction of any shape) is the ``amoeba amoeballm`` commands' job.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.metrics.loss import lm_loss
from amoeba_plugin.options import option
from amoeba_plugin.plan import Plan
from amoeba_plugin.pruning.allocation import FILL_TOLERANCE, fill_ratio
from amoeba_plugin.surgery import apply_soft

from .extract import choose_shape
from .select import SelectionConfig, run_selection
from .train import score_shapes

FILLS = ("width", "none")


@dataclass
class AmoebaLLMOptions(SelectionConfig):
    """The selection settings plus what only the one-shot method uses (see docs/amoeballm.md)."""

    fill: str = option("width", "width: fill every depth to the budget with the width ranking and keep the depth "
                                "with the lowest calibration loss (lands within 2% under the budget); none: the "
                                "best (depth, width ratio) grid shape under the budget (the paper's extraction)",
                       choices=FILLS)
    score_windows: int | None = option(2, "calibration windows the depth DP and the shape ranking score on "
                                          "(none: all; the width statistics always use all)", ge=1)
    score_seq_len: int | None = option(128, "tokens of each window they score (none: the whole window)", ge=2)


def shallowest_useful_depth(bound, anatomy) -> int:
    """The fewest layers whose full-width plan can still reach ``1 - FILL_TOLERANCE`` of the target
    (counting the most expensive layers): shallower subnets always land too far under the budget."""
    base = bound.measure(Plan([], Plan.full(anatomy).source))
    costs = sorted((bound.measure(Plan([lp], Plan.full(anatomy).source)) - base for lp in Plan.full(anatomy).layers),
                   reverse=True)
    need, total = (1 - FILL_TOLERANCE) * bound.target - base, 0
    for depth, cost in enumerate(costs, 1):
        total += cost
        if total >= need:
            return depth
    return anatomy.num_layers


class AmoebaLLMMethod(Method):
    """AmoebaLLM's knowledge-preserving selection (Fu et al., NeurIPS 2024): the DP over layers for
    depth, FLAP-style global width masks with bias compensation; the subnet under the budget with
    the lowest loss on the calibration windows wins (``fill`` says which subnets compete)."""

    name = "amoeballm"
    description = ("AmoebaLLM selection: DP layer choice + fluctuation-ranked width filled to the budget; the "
                   "depth with the lowest calibration loss (no fine-tuning; see `amoeba amoeballm`)")
    capabilities = frozenset({"depth", "width", "calibration", "changes_weights"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    #: the selection settings are the method's options: one dataclass for `amoeba prune` and `amoeballm select`
    options_class = AmoebaLLMOptions

    def prune(self, context):
        config = self.resolve_options(context)
        model, anatomy, budget = context.model, context.anatomy, context.budget
        windows = self.calibration_windows(context)
        scoring = windows[: config.score_windows, : config.score_seq_len]
        bound = budget.bind(anatomy)
        if config.fill == "width":  # the DP need not go below the depth that can still fill the budget
            lowest = shallowest_useful_depth(bound, anatomy)
            floor = config.resolved_min_layers(anatomy.num_layers)
            if lowest > floor:
                config = dataclasses.replace(config, min_layers=max(lowest, config.keep_last))
        table, report = run_selection(model, context.tokenizer, anatomy, windows, config, seed=context.seed,
                                      depth_windows=scoring)
        if config.fill == "width":
            result = self._filled(context, table, scoring, bound)
            if result is not None:
                result.info["selection"] = report
                return result
        fitting = [s for s in table.shapes() if bound.fits(table.plan(s, anatomy))]
        # the ranking signal, measured only where it can matter
        scores = score_shapes(model, anatomy, table, scoring, shapes=fitting)
        choice = choose_shape(table, anatomy, budget, scores)
        plan = table.plan(choice.shape, anatomy)
        return PruneResult(plan, patch=table.patch(choice.shape, anatomy) or None,
                           info={"shape": str(choice.shape), "reason": choice.reason, "selection": report})

    def _filled(self, context, table, scoring, bound) -> PruneResult | None:
        """Every depth filled to the budget, scored by calibration loss; the best, or None when no
        depth lands on budget (then the grid decides)."""
        model, anatomy, budget = context.model, context.anatomy, context.budget
        candidates = {}
        for depth in table.depth.depths():
            try:
                plan = table.ranking.plan(anatomy, budget, depth=table.depth.kept_layers(depth))
            except AmoebaError:  # this depth cannot reach the budget at any width
                continue
            ratio = fill_ratio(budget, anatomy, plan)
            if not bound.fits(plan) or ratio < 1 - FILL_TOLERANCE:
                continue
            patch = table.ranking.patch(model, anatomy, plan)
            with torch.no_grad(), apply_soft(model, anatomy, plan, patch=patch):
                loss = float(lm_loss(model, scoring, batch_size=8))
            candidates[depth] = (round(loss, 5), plan, patch, ratio)
        if not candidates:
            return None
        depth = min(candidates, key=lambda d: (candidates[d][0], -d))
        loss, plan, patch, ratio = candidates[depth]
        shape = plan.shape(anatomy)
        kept = table.depth.kept_layers(depth)
        plan.provenance = {"method": "amoeballm", "depth": depth, "layers": kept, "fill": "width",
                           "allocation": table.allocation, "calibration_loss": loss}
        reason = f"lowest calibration loss ({loss:.4f}) among {len(candidates)} depths filled to the budget"
        return PruneResult(plan, patch=patch or None, info={
            "shape": f"{depth}xfill", "depth": depth, "reason": reason, "fill_ratio": round(ratio, 5),
            "depth_losses": {str(d): c[0] for d, c in sorted(candidates.items(), reverse=True)},
            "kv_groups": [s["kv_groups"] for s in shape], "intermediate_size": [s["intermediate_size"] for s in shape]})
