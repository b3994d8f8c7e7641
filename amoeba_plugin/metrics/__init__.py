"""The importance-metric contract. A metric scores prunable units; methods pick the top ones.
Register instances through ``amoeba_register_metrics``.

Return format of :meth:`Metric.score` (higher = more important, float32 on the CPU):

* ``layer``: one 1-D tensor with a score per decoder layer;
* ``hidden_channel``: one 1-D tensor of ``hidden_size`` scores;
* per-layer units, a list with one 1-D tensor per layer of the anatomy (empty for a layer without
  attention or MLP):

  - ``kv_group``: ``num_kv_groups`` scores; a group's score covers its K and V heads and all the
    query heads that read them (GQA aggregation: see :mod:`amoeba_plugin.metrics.units`);
  - ``query_head``: ``num_query_heads`` scores, numbered group-major (head ``g * qpg + i`` is query
    ``i`` of group ``g``), as ``LayerPlan.query_heads`` counts them;
  - ``mlp_channel``: ``intermediate_size`` scores;
  - ``head_channel``: ``head_dim`` scores, channels shared by every head of the layer; channel ``j``
    and ``j + head_dim/2`` (a RoPE pair) always carry the same score, their sum, so any top-k by pairs
    keeps pairs whole.

Metrics that need data take ``calibration``: a LongTensor of windows ``[n, seq_len]``, or (for the
activation-statistics metrics) a :class:`~amoeba_plugin.calibration.CalibrationStats` collected
once by the method and shared between several ``score`` calls.
"""
from __future__ import annotations

from typing import Any

from ..errors import AmoebaError

#: unit types a metric may score
UNITS = ("layer", "kv_group", "query_head", "mlp_channel", "hidden_channel", "head_channel")


class Metric:
    """Base class. Set the class attributes; implement :meth:`score`."""

    name: str = ""
    description: str = ""
    source: str = ""  # the paper or code the metric follows
    units: frozenset[str] = frozenset()
    needs_calibration: bool = False
    needs_gradients: bool = False
    #: what the metric reads from :class:`CalibrationStats`: {"gram"} and/or input sites
    needs_statistics: frozenset[str] = frozenset()

    def score(self, model, anatomy, unit: str, calibration: Any = None, **options):  # pragma: no cover
        raise NotImplementedError

    def score_units(self, model, anatomy, units, calibration: Any = None, **options) -> dict:
        """Several unit types at once: ``{unit: scores}``. Metrics that gather data (statistics,
        gradients) override this to gather it once."""
        return {unit: self.score(model, anatomy, unit, calibration, **options) for unit in units}

    def check_unit(self, unit: str) -> None:
        """Raise the standard error for a unit this metric does not score."""
        if unit not in self.units:
            raise AmoebaError(f"the '{self.name}' metric cannot score '{unit}' units "
                              f"(it scores: {', '.join(sorted(self.units))})",
                              "pick a metric that scores this unit (see `amoeba plugins`)")

    def check_calibration(self, calibration: Any) -> None:
        if self.needs_calibration and calibration is None:
            raise AmoebaError(f"the '{self.name}' metric needs calibration data and none was given",
                              "pass a calibration source, e.g. --calibration sotu:train")


__all__ = ["UNITS", "Metric"]
