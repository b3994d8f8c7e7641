"""``amoeballm`` as a method of the common pruning API: stage 1 only (no fine-tuning).

``amoeba prune MODEL --method amoeballm --budget nonembed=0.6`` builds the selection table in
memory and returns the best fitting shape, scored by calibration loss. The one-for-all bundle
(selection, SMoL fine-tuning, extraction of any shape) is the ``amoeba amoeballm`` commands' job.
"""
from __future__ import annotations

from amoeba_plugin.methods import Method, PruneResult

from .extract import choose_shape
from .select import SelectionConfig, run_selection
from .train import score_shapes


class AmoebaLLMMethod(Method):
    """AmoebaLLM's knowledge-preserving selection (Fu et al., NeurIPS 2024): the DP over layers for
    depth, FLAP-style global width masks with bias compensation; the shape under the budget with
    the lowest loss on the calibration windows wins."""

    name = "amoeballm"
    description = ("AmoebaLLM selection: DP layer choice + fluctuation-ranked width masks; the best "
                   "(depth, width) under the budget (no fine-tuning; see `amoeba amoeballm`)")
    capabilities = frozenset({"depth", "width", "calibration", "changes_weights"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    #: the selection settings are the method's options: one dataclass for `amoeba prune` and `amoeballm select`
    options_class = SelectionConfig

    def prune(self, context):
        config = self.resolve_options(context)
        windows = self.calibration_windows(context)
        table, report = run_selection(context.model, context.tokenizer, context.anatomy, windows, config,
                                      seed=context.seed)
        bound = context.budget.bind(context.anatomy)
        fitting = [s for s in table.shapes() if bound.fits(table.plan(s, context.anatomy))]
        # the ranking signal, measured only where it can matter
        scores = score_shapes(context.model, context.anatomy, table, windows, shapes=fitting)
        choice = choose_shape(table, context.anatomy, context.budget, scores)
        plan = table.plan(choice.shape, context.anatomy)
        return PruneResult(plan, patch=table.patch(choice.shape, context.anatomy) or None,
                           info={"shape": str(choice.shape), "reason": choice.reason, "selection": report})

