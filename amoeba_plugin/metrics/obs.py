"""The OBS / SparseGPT single-weight saliency, the initialisation of Search for Efficient LLMs."""
from __future__ import annotations

import torch

from ..errors import AmoebaError
from ..calibration import INPUT_SITE, SITES, CalibrationStats, InputStats, collect_statistics
from .linear import LinearMetric, weight


def inverse_hessian_diagonal(stats: InputStats, damping: float = 0.01) -> torch.Tensor:
    """``diag((2 X X^T / n + damping)^-1)`` in float64; the damping grows until Cholesky succeeds."""
    for attempt in range(6):
        h = stats.hessian(damping * 10 ** attempt)
        factor, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            return torch.diagonal(torch.cholesky_inverse(factor)).clone()
    raise AmoebaError("the input Hessian stayed singular even with strong damping",
                      "use more calibration windows or a larger damping")


class OBSMetric(LinearMetric):
    """``Phi_ij = W_ij^2 / [(2 X X^T)^-1]_jj`` (the least output error from removing weight ``ij``),
    summed into rows for q, k, v, gate and up and into columns for o and down, then into units
    (Search for Efficient LLMs, Eq. 1-3; SparseGPT's saliency).

    ``H`` is damped with ``damping * mean(diag H)`` (SparseGPT's 0.01 by default). With windows as
    calibration, each layer's Gram matrices are turned into inverse-Hessian diagonals as soon as the
    layer is done and then dropped, so memory holds one layer's ``X X^T`` at a time.
    """

    name = "obs"
    description = "OBS/SparseGPT saliency W^2/[H^-1]_jj summed into rows/columns; needs calibration"
    source = ("Shen et al., 'Search for Efficient LLMs' (NeurIPS 2024), Eq. 1; Frantar & Alistarh, "
              "SparseGPT (2023); Hassibi & Stork, Optimal Brain Surgeon (1993)")
    units = frozenset({"mlp_channel", "query_head", "kv_group", "head_channel", "hidden_channel"})
    needs_calibration = True
    needs_statistics = frozenset({"gram", *SITES})

    def prepare(self, model, anatomy, calibration, damping: float = 0.01, batch_size: int = 8, **options):
        diagonals: dict[int, dict[str, torch.Tensor]] = {}

        def invert(layer, stats):
            diagonals[layer.index] = {site: inverse_hessian_diagonal(acc, damping)
                                      for site, acc in stats.inputs.items()}

        if isinstance(calibration, CalibrationStats):
            if calibration.fingerprint and anatomy.fingerprint and calibration.fingerprint != anatomy.fingerprint:
                raise AmoebaError("these calibration statistics were collected on another model",
                                  "collect them again on this model")
            if not calibration.has(gram=True, sites=SITES):
                raise AmoebaError("the 'obs' metric needs Gram matrices and these statistics have none",
                                  "collect them with collect_statistics(..., gram=True) or pass the windows")
            for layer in anatomy.layers:
                if layer.index in calibration.layers:
                    invert(layer, calibration.layer(layer.index))
        else:
            collect_statistics(model, anatomy, calibration, gram=True, sites=SITES, batch_size=batch_size,
                               on_layer=invert, keep_gram=False)
        return diagonals

    def saliency(self, model, layer, role, diagonals, **options):
        w = weight(model, layer.modules[role])
        inverse = diagonals[layer.index][INPUT_SITE[role]].to(w.device, torch.float64)
        return (w.double().pow(2) / inverse[None, :]).float()


__all__ = ["OBSMetric", "inverse_hessian_diagonal"]
