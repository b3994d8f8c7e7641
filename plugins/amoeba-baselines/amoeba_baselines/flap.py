"""FLAP: fluctuation-scored heads and channels, one global ranking across layers, bias compensation."""
from dataclasses import dataclass

from amoeba_plugin.calibration import SITES, collect_statistics
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import MethodOptions, option
from amoeba_plugin.plugins import get
from amoeba_plugin.pruning.allocation import global_width, standardized_unit_scores
from amoeba_plugin.pruning.compensation import output_bias_compensation


@dataclass
class FLAPOptions(MethodOptions):
    metric: str = option("fluctuation", "linear metric scoring the o_proj/down_proj columns "
                                        "(fluctuation, wanda-sp, magnitude, obs or taylor)", registry="metrics")
    bias_compensation: bool = option(True, "fold the mean contribution of removed channels into an output bias")
    batch_size: int = option(8, "calibration windows per forward pass of the statistics", ge=1)


class FLAPMethod(Method):
    """An et al., 'Fluctuation-based Adaptive Structured Pruning for LLMs' (AAAI 2024).

    1. Calibration statistics in one layer-by-layer pass on the dense model: the mean and the
       fluctuation (variance) of every input channel of o_proj and down_proj.
    2. WIFV scores (the ``fluctuation`` metric, or ``metric=`` any linear metric) per o_proj /
       down_proj column, standardised within each layer and module type; a KV group's score is the
       mean over its columns (FLAP averages over a head's channels; GQA models are ranked by whole
       KV groups, so the result keeps equal query heads per group).
    3. FLAP's AL-AM allocation: one ranking of all KV groups and MLP channels across layers, each
       weighted by its parameter (or MACs) cost, the lowest removed until the budget fits
       (:func:`amoeba_plugin.pruning.allocation.global_width`).
    4. Bias compensation: the mean contribution of every removed channel,
       ``b = W_out[:, removed] @ mean(X[removed])``, becomes an output bias of o_proj / down_proj
       (``bias_compensation=False`` turns it off). A layer that loses all of its attention or MLP
       loses that compensation with it.
    """

    name = "flap"
    description = "FLAP: fluctuation scores, global adaptive allocation, bias compensation; needs calibration"
    capabilities = frozenset({"width", "calibration", "changes_weights"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    options_class = FLAPOptions

    def prune(self, context):
        from amoeba_plugin.errors import AmoebaError

        anatomy, budget, model = context.anatomy, context.budget, context.model
        options = self.resolve_options(context)
        metric = get("metrics", options.metric)
        if not hasattr(metric, "role_scores"):
            raise AmoebaError(f"metric '{metric.name}' does not score single linears",
                              "use a linear metric: fluctuation, wanda-sp, magnitude, obs or taylor")
        windows = self.calibration_windows(context)
        stats = collect_statistics(model, anatomy, windows, sites=SITES, batch_size=options.batch_size)
        # the metric reuses these statistics when they hold what it reads; otherwise it gets the windows
        wanted = metric.needs_statistics
        shared = bool(wanted) and stats.has(gram="gram" in wanted, sites=tuple(wanted - {"gram"}))
        calibration = (stats if shared else windows) if metric.needs_calibration else None
        roles = metric.role_scores(model, anatomy, calibration, seed=context.seed)
        groups, channels = standardized_unit_scores(anatomy, roles)
        bias = options.bias_compensation
        plan = global_width(anatomy, budget, groups, channels, self.name, output_bias=bias)
        patch = output_bias_compensation(model, anatomy, plan, stats) if bias else None
        plan.provenance = {"metric": metric.name, "bias_compensation": bias}
        shape = plan.shape(anatomy)
        return PruneResult(plan, patch=patch, info={
            "metric": metric.name, "bias_compensation": bias,
            "kv_groups": [s["kv_groups"] for s in shape], "intermediate_size": [s["intermediate_size"] for s in shape]})
