"""The importance-metric contract. A metric scores prunable units; methods pick the top ones.
Register instances through ``amoeba_register_metrics``."""
from __future__ import annotations

from typing import Any

#: unit types a metric may score
UNITS = ("layer", "kv_group", "query_head", "mlp_channel", "hidden_channel", "head_channel")


class Metric:
    """Base class. ``score`` returns, for per-layer units, a list with one 1-D tensor per layer of the
    anatomy (higher = more important); for ``layer`` and ``hidden_channel`` a single 1-D tensor."""

    name: str = ""
    description: str = ""
    source: str = ""  # the paper or code the metric follows
    units: frozenset[str] = frozenset()
    needs_calibration: bool = False
    needs_gradients: bool = False

    def score(self, model, anatomy, unit: str, calibration: Any = None, **options):  # pragma: no cover
        raise NotImplementedError
