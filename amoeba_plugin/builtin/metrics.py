"""Built-in importance metrics (one module each under :mod:`amoeba_plugin.metrics`)."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_metrics(register):
    from ..metrics.block_influence import BlockInfluenceMetric
    from ..metrics.fluctuation import FluctuationMetric
    from ..metrics.magnitude import MagnitudeMetric
    from ..metrics.obs import OBSMetric
    from ..metrics.random import RandomMetric
    from ..metrics.removal_loss import RemovalLossMetric
    from ..metrics.taylor import TaylorMetric
    from ..metrics.wanda_sp import WandaSPMetric

    for metric in (MagnitudeMetric, WandaSPMetric, FluctuationMetric, TaylorMetric, OBSMetric,
                   BlockInfluenceMetric, RemovalLossMetric, RandomMetric):
        register(metric())
