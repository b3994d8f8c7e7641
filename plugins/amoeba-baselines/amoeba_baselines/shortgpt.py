"""ShortGPT: remove whole decoder layers, the least influential first."""
from dataclasses import dataclass

from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import MethodOptions, option
from amoeba_plugin.plan import Plan
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import unreachable


@dataclass
class ShortGPTOptions(MethodOptions):
    metric: str = option("block-influence", "metric scoring layers, e.g. block-influence or removal-loss",
                         registry="metrics")
    angular: bool = option(False, "Gromov et al.'s angular distance instead of 1 - cos (passed to the metric)")


class ShortGPTMethod(Method):
    """Score layers with block influence (``1 - cos(h_in, h_out)`` on calibration text) and drop
    the lowest-scored ones until the budget fits (Men et al., 2024). ``metric`` may name any metric
    that scores layers, e.g. ``removal-loss`` for Shortened LLaMA's PPL criterion; options
    ``angular`` (Gromov et al.'s angular distance) pass through to the metric."""

    name = "shortgpt"
    description = "depth pruning: drop the layers with the lowest block influence (ShortGPT); needs calibration"
    capabilities = frozenset({"depth", "calibration"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    options_class = ShortGPTOptions

    def prune(self, context):
        anatomy, budget = context.anatomy, context.budget
        options = self.resolve_options(context)
        metric = get("metrics", options.metric)
        metric.check_unit("layer")
        windows = self.calibration_windows(context) if metric.needs_calibration else None
        scores = metric.score(context.model, anatomy, "layer", windows, seed=context.seed, angular=options.angular)
        order = sorted(range(anatomy.num_layers), key=lambda i: (float(scores[i]), i))
        full = Plan.full(anatomy)
        bound = budget.bind(anatomy)
        dropped: list[int] = []
        plan = full
        for index in order:
            if bound.fits(plan):
                break
            dropped.append(index)
            plan = Plan([lp for lp in full.layers if lp.index not in dropped], full.source)
        if not plan.layers or not bound.fits(plan):
            raise unreachable(budget, anatomy, Plan(full.layers[:1], full.source), self.name,
                              "keeping a single decoder layer")
        plan.provenance = {"metric": metric.name, "dropped_layers": sorted(dropped)}
        return PruneResult(plan, info={"dropped_layers": sorted(dropped), "metric": metric.name,
                                       "layer_scores": [round(float(s), 6) for s in scores]})
