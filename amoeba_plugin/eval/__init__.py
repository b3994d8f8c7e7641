"""Evaluators. The built-in one is perplexity with the papers' protocol (SparseGPT / Wanda /
LLM-Pruner): join documents, tokenize once, non-overlapping windows, exp(sum NLL / predicted tokens)."""
from __future__ import annotations

import math
from typing import Any

import torch


class Evaluator:
    """Base class; register instances through ``amoeba_register_evaluators``.

    ``evaluate(model, tokenizer, **options)`` returns a dict of numbers (and context such as the
    source); calling the evaluator does the same.
    """

    name: str = ""
    description: str = ""

    def evaluate(self, model, tokenizer, **options) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, model, tokenizer=None, **options) -> dict[str, Any]:
        return self.evaluate(model, tokenizer, **options)


class PerplexityEvaluator(Evaluator):
    """Held-out perplexity over the first ``max_windows`` windows of ``seq_len`` tokens of a source."""

    name = "perplexity"
    description = "perplexity, exp(mean token NLL), over non-overlapping windows of a text source"
    defaults = {"source": "sotu:validation", "seq_len": 256, "max_windows": 64, "batch_size": 8}

    def evaluate(self, model, tokenizer, source: str = "sotu:validation", seq_len: int = 256,
                 max_windows: int | None = 64, batch_size: int = 8, windows: torch.Tensor | None = None
                 ) -> dict[str, Any]:
        """``windows`` (a LongTensor ``[n, seq_len]``) skips tokenization, e.g. to compare methods on
        exactly the same tokens."""
        from ..progress import progress

        if windows is None:
            from ..data import eval_windows

            windows = eval_windows(tokenizer, source, seq_len, max_windows)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        nll, count = 0.0, 0
        try:
            with torch.no_grad():
                for start in progress(range(0, len(windows), batch_size), f"perplexity {source}"):
                    batch = windows[start: start + batch_size].to(device)
                    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
                    targets = batch[:, 1:]
                    nll += float(torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum"))
                    count += targets.numel()
        finally:
            model.train(was_training)
        return {"perplexity": math.exp(nll / count), "tokens": count, "windows": len(windows),
                "source": source, "seq_len": int(windows.shape[1])}


def perplexity(model, tokenizer, source: str = "sotu:validation", seq_len: int = 256,
               max_windows: int | None = 64, batch_size: int = 8) -> float:
    """Just the number from :class:`PerplexityEvaluator`."""
    return PerplexityEvaluator().evaluate(model, tokenizer, source=source, seq_len=seq_len,
                                          max_windows=max_windows, batch_size=batch_size)["perplexity"]


__all__ = ["Evaluator", "PerplexityEvaluator", "perplexity"]
