"""The language-model loss on calibration windows, shared by the gradient and removal metrics."""
from __future__ import annotations

import torch


def check_windows(calibration, metric: str) -> torch.Tensor:
    """``calibration`` as a LongTensor of windows, or the standard error."""
    from ..errors import AmoebaError

    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise AmoebaError(f"the '{metric}' metric needs calibration windows (a LongTensor [n, seq_len]), "
                          f"got {type(calibration).__name__}",
                          "pass amoeba_plugin.data.calibration_windows(...) (statistics are not enough: "
                          "this metric runs the model)")
    return calibration


def lm_loss(model, windows: torch.Tensor, batch_size: int = 8, backward: bool = False) -> float:
    """Mean next-token cross-entropy over all windows. With ``backward=True`` the gradient of that
    mean accumulates into ``.grad`` (one backward per batch, so memory holds one batch's graph)."""
    device = next(model.parameters()).device
    total_tokens = windows.shape[0] * (windows.shape[1] - 1)
    loss_sum = 0.0
    context = torch.enable_grad() if backward else torch.no_grad()
    with context:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                     batch[:, 1:].reshape(-1), reduction="sum")
            if backward:
                (loss / total_tokens).backward()
            loss_sum += float(loss.detach())
    return loss_sum / total_tokens


__all__ = ["check_windows", "lm_loss"]
