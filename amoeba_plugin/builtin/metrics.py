"""Built-in importance metrics: weight magnitude (data-free)."""
from __future__ import annotations

import torch

from ..errors import AmoebaError
from ..hookspecs import hookimpl
from ..metrics import Metric

_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def _abs(model, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight.detach().abs().float()


class MagnitudeMetric(Metric):
    """L1 norm of the weights that a unit owns.

    * ``mlp_channel``: ``|gate row|_1 + |up row|_1 + |down column|_1``
    * ``query_head``: the head's q rows plus its o columns (heads numbered group-major)
    * ``kv_group``: the group's query heads plus its k and v rows
    * ``hidden_channel``: every weight reading or writing the channel (embeddings, norms excluded)
    * ``layer``: mean ``|W|`` over the layer's linears
    """

    name = "magnitude"
    description = "weight magnitude (L1 norm of the weights a unit owns); needs no data"
    source = "weight magnitude (L1), as in LLM-Pruner's / FLAP's magnitude baselines"
    units = frozenset({"mlp_channel", "query_head", "kv_group", "hidden_channel", "layer"})
    needs_calibration = False
    needs_gradients = False

    def score(self, model, anatomy, unit: str, calibration=None, **options):
        if unit not in self.units:
            raise AmoebaError(f"the '{self.name}' metric cannot score '{unit}' units "
                              f"(it scores: {', '.join(sorted(self.units))})",
                              "pick a metric that scores this unit (see `amoeba plugins`)")
        with torch.no_grad():
            if unit == "mlp_channel":
                return [self._mlp(model, l) for l in anatomy.layers]
            if unit == "query_head":
                return [self._heads(model, l) for l in anatomy.layers]
            if unit == "kv_group":
                return [self._groups(model, l) for l in anatomy.layers]
            if unit == "layer":
                return torch.stack([self._layer(model, l) for l in anatomy.layers]) if anatomy.layers \
                    else torch.zeros(0)
            return self._hidden(model, anatomy)

    # ------------------------------------------------------------------ units
    @staticmethod
    def _mlp(model, layer) -> torch.Tensor:
        if not layer.has_mlp:
            return torch.zeros(0)
        m = layer.modules
        return (_abs(model, m["gate"]).sum(1) + _abs(model, m["up"]).sum(1)
                + _abs(model, m["down"]).sum(0)).cpu()

    @staticmethod
    def _heads(model, layer) -> torch.Tensor:
        if not layer.has_attention:
            return torch.zeros(0)
        m, nq = layer.modules, layer.num_query_heads
        q = _abs(model, m["q"]).sum(1).reshape(nq, -1).sum(1)
        o = _abs(model, m["o"]).sum(0).reshape(nq, -1).sum(1)
        return (q + o).cpu()

    def _groups(self, model, layer) -> torch.Tensor:
        if not layer.has_attention:
            return torch.zeros(0)
        m, g = layer.modules, layer.num_kv_groups
        heads = self._heads(model, layer).reshape(g, -1).sum(1)
        kv = (_abs(model, m["k"]).sum(1) + _abs(model, m["v"]).sum(1)).reshape(g, -1).sum(1).cpu()
        return heads + kv

    @staticmethod
    def _layer(model, layer) -> torch.Tensor:
        total, count = torch.zeros((), dtype=torch.float64), 0
        for role in _LINEARS:
            if role in layer.modules:
                w = _abs(model, layer.modules[role])
                total += w.sum().double().cpu()
                count += w.numel()
        return (total / count).float() if count else torch.zeros(())

    @staticmethod
    def _hidden(model, anatomy) -> torch.Tensor:
        score = _abs(model, anatomy.embed).sum(0).cpu()
        if not anatomy.tied_embeddings:
            score = score + _abs(model, anatomy.lm_head).sum(0).cpu()
        for layer in anatomy.layers:
            for role in ("q", "k", "v", "gate", "up"):  # read the hidden state: columns
                if role in layer.modules:
                    score += _abs(model, layer.modules[role]).sum(0).cpu()
            for role in ("o", "down"):  # write the residual stream: rows
                if role in layer.modules:
                    score += _abs(model, layer.modules[role]).sum(1).cpu()
        return score


@hookimpl
def amoeba_register_metrics(register):
    register(MagnitudeMetric())
