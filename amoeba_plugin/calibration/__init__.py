"""Calibration: the data a method calibrates on and what it computes from it.

* :mod:`~amoeba_plugin.calibration.windows`: :func:`calibration_windows`, seeded windows from a train split.
"""
from __future__ import annotations

from .windows import calibration_windows

__all__ = ["calibration_windows"]
