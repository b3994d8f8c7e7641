"""Calibration, a host capability that methods compose: the data a method calibrates on, and the
layer-by-layer pass that calibrates each decoder layer and then propagates its outputs to the next.

* :mod:`~amoeba_plugin.calibration.windows`: :func:`calibration_windows`, seeded windows from a train split;
* :mod:`~amoeba_plugin.calibration.layerwise`: :func:`layer_pass` (calibrate, then propagate, one decoder
  layer at a time, through the dense model or a subnet) and :func:`decoder_inputs`, where it starts;
* :mod:`~amoeba_plugin.calibration.statistics`: :func:`collect_statistics` (per-channel sums, squares,
  Gram matrices and block influence, in one pass) and :class:`CalibrationStats`.

Statistics collection and reformation (:func:`amoeba_plugin.pruning.reformation.reformation_patch`)
both run on :func:`layer_pass`.
"""
from __future__ import annotations

from .layerwise import LayerStep, decoder_inputs, layer_pass
from .statistics import (
    INPUT_SITE, SITES, CalibrationStats, InputStats, LayerStats, collect_statistics, ensure_statistics,
)
from .windows import calibration_windows

__all__ = [
    "INPUT_SITE",
    "SITES",
    "CalibrationStats",
    "InputStats",
    "LayerStats",
    "LayerStep",
    "calibration_windows",
    "collect_statistics",
    "decoder_inputs",
    "ensure_statistics",
    "layer_pass",
]
