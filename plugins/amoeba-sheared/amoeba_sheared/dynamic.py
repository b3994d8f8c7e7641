"""Dynamic batch loading: the per-domain loss gap to a reference reweights the mixture.

Every ``update_every`` steps (Sheared: 50 while pruning, 400 in continued pre-training) the trainer
measures each domain's held-out loss and calls :func:`update_proportions`. The update itself (the
paper's exponentiated, clipped, smoothed step) lives in the host's recovery package,
:mod:`amoeba_plugin.recovery.mixture`, so pruning-time training here and host recovery share one copy.
"""
from __future__ import annotations

from amoeba_plugin.recovery.mixture import update_proportions

__all__ = ["update_proportions"]
