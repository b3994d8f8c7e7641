"""Metrics built from an element-wise saliency of every linear weight.

Magnitude, Wanda-sp, FLAP's fluctuation, first-order Taylor and the OBS saliency all score single
weights; they differ only in the saliency. This base class folds a saliency matrix ``[out, in]``
into units by one rule (:mod:`amoeba_plugin.metrics.units`): rows of q, k, v, gate and up and columns
of o and down belong to heads, KV groups and MLP channels; the other orientation (columns of the
readers, rows of the writers) belongs to hidden channels.
"""
from __future__ import annotations

import torch

from . import Metric
from .units import COLUMN_ROLES, ROW_ROLES, layer_units

_PER_LAYER = ("kv_group", "query_head", "mlp_channel", "head_channel")


def weight(model, name: str) -> torch.Tensor:
    """The float32 weight of the module ``name`` (detached)."""
    return model.get_submodule(name).weight.detach().float()


def present(layer, role: str) -> bool:
    """Whether ``layer`` has the linear of ``role`` (layers may lack attention or MLP)."""
    if role not in layer.modules:
        return False
    return layer.has_attention if role in ("q", "k", "v", "o") else layer.has_mlp


class LinearMetric(Metric):
    """Subclass and implement :meth:`saliency`; override :meth:`prepare` to gather data once."""

    #: roles whose saliency scores heads, KV groups, head channels and MLP channels
    unit_roles: tuple[str, ...] = ROW_ROLES + COLUMN_ROLES
    #: roles whose saliency scores hidden channels
    hidden_roles: tuple[str, ...] = ROW_ROLES + COLUMN_ROLES

    def prepare(self, model, anatomy, calibration, **options):
        """Whatever :meth:`saliency` needs (statistics, gradients), computed once per call."""
        return

    def saliency(self, model, layer, role: str, prepared, **options) -> torch.Tensor:  # pragma: no cover
        """Element-wise importance ``[out, in]`` of the weight of ``layer.modules[role]``."""
        raise NotImplementedError

    def finish(self, role: str, scores: torch.Tensor, **options) -> torch.Tensor:
        """Post-process a linear's unit-oriented scores (FLAP squares the attention ones)."""
        return scores

    def hidden_extra(self, model, anatomy, prepared, **options) -> torch.Tensor | None:
        """Scores from outside the decoder layers (embeddings), added to the hidden-channel scores."""
        return None

    def layer_scores(self, model, anatomy, prepared, **options) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ folding
    def score(self, model, anatomy, unit: str, calibration=None, **options):
        return self.score_units(model, anatomy, (unit,), calibration, **options)[unit]

    def score_units(self, model, anatomy, units, calibration=None, **options) -> dict:
        for unit in units:
            self.check_unit(unit)
        self.check_calibration(calibration)
        prepared = self.prepare(model, anatomy, calibration, **options)
        out, per_layer = {}, None
        with torch.no_grad():
            for unit in units:
                if unit == "layer":
                    out[unit] = self.layer_scores(model, anatomy, prepared, **options).float().cpu()
                elif unit == "hidden_channel":
                    out[unit] = self._hidden(model, anatomy, prepared, **options)
                else:
                    if per_layer is None:
                        per_layer = [self._unit_roles(model, layer, prepared, **options) for layer in anatomy.layers]
                    out[unit] = [layer_units(layer, unit, roles, anatomy.rope).float()
                                 for layer, roles in zip(anatomy.layers, per_layer)]
        return out

    def role_scores(self, model, anatomy, calibration=None, **options) -> list[dict[str, torch.Tensor]]:
        """Per layer, each scored linear's unit-oriented scores (rows of q, k, v, gate, up; columns of
        o, down) before they are folded into units: what FLAP standardises per layer."""
        self.check_calibration(calibration)
        prepared = self.prepare(model, anatomy, calibration, **options)
        with torch.no_grad():
            return [self._unit_roles(model, layer, prepared, **options) for layer in anatomy.layers]

    def _unit_roles(self, model, layer, prepared, **options) -> dict[str, torch.Tensor]:
        roles = {}
        for role in self.unit_roles:
            if present(layer, role):
                s = self.saliency(model, layer, role, prepared, **options)
                s = s.sum(1) if role in ROW_ROLES else s.sum(0)
                roles[role] = self.finish(role, s.double(), **options).cpu()
        return roles

    def _hidden(self, model, anatomy, prepared, **options) -> torch.Tensor:
        total = torch.zeros(anatomy.hidden_size, dtype=torch.float64)
        for layer in anatomy.layers:
            for role in self.hidden_roles:
                if not present(layer, role):
                    continue
                s = self.saliency(model, layer, role, prepared, **options)
                total += (s.sum(0) if role in ROW_ROLES else s.sum(1)).double().cpu()
        extra = self.hidden_extra(model, anatomy, prepared, **options)
        if extra is not None:
            total += extra.double().cpu()
        return total.float()


class StatisticsMetric(LinearMetric):
    """A linear metric that reads per-channel input statistics (Wanda-sp, FLAP): scores o_proj and
    down_proj columns for units and q/gate inputs for hidden channels; accepts windows or a shared
    :class:`~amoeba_plugin.calibration.CalibrationStats`."""

    needs_calibration = True
    needs_statistics = frozenset({"o", "down", "q", "gate"})
    unit_roles = COLUMN_ROLES
    hidden_roles = ROW_ROLES

    def prepare(self, model, anatomy, calibration, batch_size: int = 8, **options):
        from ..calibration import ensure_statistics

        return ensure_statistics(model, anatomy, calibration, sites=tuple(sorted(self.needs_statistics)),
                                 batch_size=batch_size)


__all__ = ["LinearMetric", "StatisticsMetric", "present", "weight"]
