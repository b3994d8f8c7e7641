"""Named text sources and the token windows built from them.

A source spec is ``name[:split]`` (``sotu:train``, ``brown``), ``file:PATH`` (plain text, documents
separated by blank lines), ``json:PATH`` / ``parquet:PATH`` / ``csv:PATH`` / ``text:PATH`` (local
files read with ``datasets``), ``hf:NAME[:split]`` (a hub dataset, when online), or an existing path.
Options for ``datasets`` specs follow a ``?``: ``json:/p/a.jsonl?column=body``,
``hf:Salesforce/wikitext:test?config=wikitext-2-raw-v1``.

Sources say which splits may be used for calibration (``train_splits``); everything else is
evaluation-only, so held-out text never leaks into pruning decisions.

The modules, each importable on its own (this package re-exports their public names):

* :mod:`~amoeba_plugin.data.sources`: the :class:`TextSource` contract;
* :mod:`~amoeba_plugin.data.shipped`: the corpora shipped in ``data/corpora`` (:func:`builtin_sources`);
* :mod:`~amoeba_plugin.data.user`: sources a spec names directly (``file:``, ``json:``, ``hf:``, ...);
* :mod:`~amoeba_plugin.data.specs`: spec syntax and resolution (:class:`TextSpec`, :func:`resolve_source`);
* :mod:`~amoeba_plugin.data.tokens`: the token cache, :func:`token_windows` and :func:`eval_windows`;
* :mod:`~amoeba_plugin.data.overlap`: :func:`check_disjoint`, :func:`check_unseen`, no evaluation on text
  a model calibrated or trained on (:func:`record_seen_text` records it, :func:`seen_texts` reads it);

Calibration windows are sampled by :func:`amoeba_plugin.calibration.calibration_windows`; the name
is also importable from here.
"""
from __future__ import annotations

from .overlap import check_disjoint, check_unseen, record_seen_text, seen_texts
from .shipped import CORPORA, builtin_sources
from .sources import TextSource
from .specs import SPEC_SYNTAX, TextSpec, canonical_spec, resolve_source, spec_of
from .tokens import eval_windows, source_tokens, token_windows
from .user import hf_dataset_source, text_file_source


def __getattr__(name: str):
    # imported on first use: amoeba_plugin.calibration imports this package, not the other way round
    if name == "calibration_windows":
        from ..calibration.windows import calibration_windows

        return calibration_windows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "calibration_windows"])


__all__ = [
    "canonical_spec",
    "check_disjoint",
    "check_unseen",
    "record_seen_text",
    "seen_texts",
    "SPEC_SYNTAX",
    "TextSource",
    "TextSpec",
    "builtin_sources",
    "calibration_windows",
    "eval_windows",
    "hf_dataset_source",
    "resolve_source",
    "source_tokens",
    "text_file_source",
    "token_windows",
]
