"""Token ids of a source and the papers' perplexity windows over them.

A split is tokenized once per process (``"\\n\\n".join(documents)``, no special tokens) and kept in a
small cache, so calibration and evaluation windows of the same text never tokenize it twice.
Evaluation windows live here, next to :func:`token_windows`, because they are that same protocol
applied to a spec; calibration windows (a sampling policy: train splits only, seeded offsets) live
in :mod:`amoeba_plugin.calibration.windows`.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import torch

from ..errors import DataError
from .sources import TextSource
from .specs import TextSpec, resolve_source, spec_of


def _encode(tokenizer, text: str) -> torch.Tensor:
    """One tokenization of the whole text, without special tokens (windows are plain text)."""
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.tensor(enc["input_ids"], dtype=torch.long)


def _cut(ids: torch.Tensor, seq_len: int, max_windows: int | None, what: str) -> torch.Tensor:
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2, got {seq_len}", "pass a larger seq_len")
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max(int(max_windows), 0))
    if n == 0:
        raise DataError(f"{what} has {ids.numel()} tokens, fewer than one window of {seq_len}",
                        "use more text or a smaller seq_len")
    return ids[: n * seq_len].view(n, seq_len).clone()


def token_windows(tokenizer, documents: list[str], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """The papers' perplexity protocol: ``"\\n\\n".join(documents)``, tokenize once, non-overlapping
    windows of ``seq_len`` (remainder dropped), the first ``max_windows``. LongTensor ``[n, seq_len]``."""
    return _cut(_encode(tokenizer, "\n\n".join(documents)), seq_len, max_windows, "the text")


_TOKEN_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TOKEN_CACHE_SIZE = 8


def _tokenizer_key(tokenizer) -> tuple:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest()
    return type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(vocab), digest


def source_tokens(tokenizer, source: TextSource, split: str) -> torch.Tensor:
    """All token ids of one split (1-D), tokenized once per process per (tokenizer, source, split)."""
    key = (_tokenizer_key(tokenizer), source.key or source.name, split)
    if key in _TOKEN_CACHE:
        _TOKEN_CACHE.move_to_end(key)
        return _TOKEN_CACHE[key]
    ids = _encode(tokenizer, "\n\n".join(source.documents(split)))
    _TOKEN_CACHE[key] = ids
    while len(_TOKEN_CACHE) > _TOKEN_CACHE_SIZE:
        _TOKEN_CACHE.popitem(last=False)
    return ids


def eval_windows(tokenizer, source_spec: str | TextSpec = "sotu:validation", seq_len: int = 256,
                 max_windows: int | None = None) -> torch.Tensor:
    """:func:`token_windows` for a source spec, using the tokenization cache."""
    source, split = resolve_source(source_spec, purpose="evaluation")
    return _cut(source_tokens(tokenizer, source, split), seq_len, max_windows, spec_of(source, split))


__all__ = ["eval_windows", "source_tokens", "token_windows"]
