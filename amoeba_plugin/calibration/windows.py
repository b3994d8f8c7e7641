"""Calibration windows: the token windows a method calibrates on, sampled from a train split."""
from __future__ import annotations

import torch

from ..data.specs import TextSpec, resolve_source, spec_of
from ..data.tokens import source_tokens
from ..errors import DataError


def calibration_windows(tokenizer, source_spec: str | TextSpec = "sotu:train", n: int = 32, seq_len: int = 256,
                        seed: int = 0) -> torch.Tensor:
    """``n`` random windows ``[n, seq_len]`` from a train split (start offsets uniform, seeded).

    Evaluation-only splits are refused, so held-out text never shapes a pruning decision.
    """
    source, split = resolve_source(source_spec, purpose="calibration")
    where = spec_of(source, split)
    if source.role(split) != "train":
        usable = [spec_of(source, s) for s in source.split_names() if source.role(s) == "train"]
        raise DataError(f"'{where}' is held out for evaluation and may not be used for calibration",
                        f"calibrate on {' or '.join(usable)}" if usable else
                        "calibrate on a training split, e.g. sotu:train, or your own text with file:PATH")
    if n < 1 or seq_len < 2:
        raise DataError(f"calibration needs n >= 1 and seq_len >= 2 (got n={n}, seq_len={seq_len})",
                        "pass positive sizes")
    ids = source_tokens(tokenizer, source, split)
    available = ids.numel() // seq_len if ids.numel() > seq_len else 0
    if available == 0:
        raise DataError(f"'{where}' has {ids.numel():,} tokens, fewer than one window of {seq_len} tokens",
                        f"use a seq_len below {ids.numel()}, or a larger source" if ids.numel() > 2 else
                        "use a larger source")
    if n > available:
        raise DataError(f"'{where}' has {ids.numel():,} tokens, enough for {available} windows of {seq_len} "
                        f"tokens, but {n} were asked for",
                        f"ask for at most {available} samples, use a shorter seq_len, or a larger source")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n,), generator=g)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


__all__ = ["calibration_windows"]
