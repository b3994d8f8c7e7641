"""ShortGPT: remove whole decoder layers, the least influential first; then fill the budget with width."""
from dataclasses import dataclass

from amoeba_plugin.calibration import SITES, collect_statistics
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import MethodOptions, option
from amoeba_plugin.plan import Plan
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import (
    FILL_TOLERANCE,
    fill_ratio,
    global_width,
    standardized_unit_scores,
    unreachable,
)

FILLS = ("width", "none")


@dataclass
class ShortGPTOptions(MethodOptions):
    metric: str = option("block-influence", "metric scoring layers, e.g. block-influence or removal-loss",
                         registry="metrics")
    angular: bool = option(False, "Gromov et al.'s angular distance instead of 1 - cos (passed to the metric)")
    fill: str = option("width", "width: when whole layers land more than 2% under the budget, drop one layer "
                                "fewer and remove the lowest-ranked KV groups and MLP channels of the kept "
                                "layers until the budget fits; none: whole layers only (the paper)",
                       choices=FILLS)
    width_metric: str = option("fluctuation", "linear metric ranking the width units of fill=width "
                                              "(standardised per layer, one ranking as FLAP)", registry="metrics")


class ShortGPTMethod(Method):
    """Score layers with block influence (``1 - cos(h_in, h_out)`` on calibration text) and drop
    the lowest-scored ones until the budget fits (Men et al., 2024). ``metric`` may name any metric
    that scores layers, e.g. ``removal-loss`` for Shortened LLaMA's PPL criterion; options
    ``angular`` (Gromov et al.'s angular distance) pass through to the metric.

    Whole layers land up to one layer below the budget. ``fill="width"`` (the default, see
    docs/baselines.md for the measurement) then keeps the last layer it would drop and removes width
    instead: KV groups and MLP channels of the kept layers, ranked by ``width_metric`` standardised
    per layer (FLAP's ranking, no bias compensation, so the weights stay as they are), the lowest
    first until the budget fits, topped up to within one unit of it. ``fill="none"`` is the paper's."""

    name = "shortgpt"
    description = ("depth pruning: drop the layers with the lowest block influence (ShortGPT), fill the rest of "
                   "the budget with width; needs calibration")
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
        info = {"metric": metric.name, "fill": options.fill, "layer_scores": [round(float(s), 6) for s in scores]}
        if options.fill == "width" and dropped and fill_ratio(budget, anatomy, plan) < 1 - FILL_TOLERANCE:
            filled = self._fill(context, options, dropped[:-1])
            if fill_ratio(budget, anatomy, filled) > fill_ratio(budget, anatomy, plan):
                plan, dropped = filled, dropped[:-1]
                info["filled_with_width"] = True
        info["dropped_layers"] = sorted(dropped)
        plan.provenance = {"metric": metric.name, "dropped_layers": sorted(dropped), "fill": options.fill}
        return PruneResult(plan, info=info)

    def _fill(self, context, options, dropped: list[int]) -> Plan:
        """Drop ``dropped`` and remove the lowest-ranked width units of the other layers until the budget fits."""
        anatomy, model = context.anatomy, context.model
        scorer = get("metrics", options.width_metric)
        if not hasattr(scorer, "role_scores"):
            raise AmoebaError(f"width_metric '{scorer.name}' does not score single linears",
                              "use a linear metric: fluctuation, wanda-sp, magnitude, obs or taylor")
        calibration = None
        if scorer.needs_calibration:
            windows = self.calibration_windows(context)
            wanted = scorer.needs_statistics
            stats = collect_statistics(model, anatomy, windows, sites=SITES) if wanted else None
            shared = stats is not None and stats.has(gram="gram" in wanted, sites=tuple(wanted - {"gram"}))
            calibration = stats if shared else windows
        groups, channels = standardized_unit_scores(anatomy, scorer.role_scores(model, anatomy, calibration,
                                                                                seed=context.seed))
        kept = [i for i in range(anatomy.num_layers) if i not in set(dropped)]
        return global_width(anatomy, context.budget, groups, channels, self.name, depth=kept, top_up=True)
