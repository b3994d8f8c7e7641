"""Sources a spec names directly: a plain text file (``file:PATH``), a local file read with
``datasets`` (``json:PATH``, ``parquet:PATH``, ``csv:PATH``, ``text:PATH``, ``arrow:PATH``) and a hub
dataset (``hf:NAME``). Options for ``datasets`` specs follow a ``?``: ``json:/p/a.jsonl?column=body``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import DataError
from .sources import TextSource

_DATASETS_BUILDERS = ("json", "parquet", "csv", "text", "arrow")
_EVAL_SPLIT_NAMES = frozenset({"test", "validation", "valid", "val", "eval", "dev"})


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def text_file_source(path: str | os.PathLike) -> TextSource:
    """A plain UTF-8 text file; documents are separated by blank lines; one split, ``text``."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"no text file at {p}", "check the path (file:PATH needs an existing file)")

    def load() -> list[str]:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{p} is not UTF-8 text ({exc})", "convert it to UTF-8") from None
        return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]

    return TextSource(f"file:{p}", f"plain text file {p}", {"text": load}, train_splits=("text",),
                      licence="the user's", origin=str(p), key=_file_key(p))


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``body?k=v&k2=v2`` -> (body, options); a ``?`` not followed by k=v pairs is part of the body."""
    body, sep, query = spec.rpartition("?")
    if sep and query and all("=" in part for part in query.split("&")):
        return body, dict(parse_qsl(query))
    return spec, {}


def hf_dataset_source(spec: str) -> TextSource:
    """A ``datasets`` dataset: ``json:PATH`` (also parquet/csv/text/arrow) or ``hf:NAME`` (hub).

    Options after ``?``: ``column`` (default ``text``), ``config`` (hub configuration name). Local
    files give one split, ``train``; hub splits named test/validation/... are evaluation-only.
    The spec's own ``:SPLIT`` suffix is handled by :func:`~amoeba_plugin.data.resolve_source`.
    """
    body, options = _split_options(spec)
    builder, _, target = body.partition(":")
    column = options.get("column", "text")
    if builder in _DATASETS_BUILDERS:
        p = Path(target).expanduser().resolve()
        if not p.exists():
            raise DataError(f"no file at {p}", f"check the path in '{spec}'")
        args, kwargs, splits, key = (builder,), {"data_files": str(p)}, ["train"], f"{builder}:{_file_key(p)}"
    elif builder == "hf":
        if not target:
            raise DataError(f"'{spec}' names no dataset",
                            "write hf:OWNER/NAME[:SPLIT], e.g. hf:Salesforce/wikitext:test?config=wikitext-2-raw-v1")
        args, kwargs, splits, key = (target,), {}, None, spec
        if "config" in options:
            args = (target, options["config"])
    else:
        raise DataError(f"'{spec}' is not a datasets spec", f"use one of {', '.join(_DATASETS_BUILDERS)} or hf")

    def loader(split: str) -> Callable[[], list[str]]:
        def load() -> list[str]:
            from ..models import _hub_reachable

            if builder == "hf" and not _hub_reachable():  # fail now, not after ~50 s of retries
                raise DataError(f"'{spec}' is a hub dataset and the Hugging Face hub cannot be reached",
                                "save the text locally (JSON lines with a 'text' field) and use json:PATH")
            try:
                import datasets

                ds = datasets.load_dataset(*args, split=split, **kwargs)
            except Exception as exc:  # offline hub, bad file, unknown split: one line with the cause
                raise DataError(f"cannot load '{spec}' split '{split}' with datasets ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]})",
                                "check the name and split; offline, save the data as JSON lines and use "
                                "json:PATH") from None
            if column not in ds.column_names:
                raise DataError(f"'{spec}' has no column '{column}' (columns: {', '.join(ds.column_names)})",
                                f"add ?column=NAME to the spec, e.g. {body}?column={ds.column_names[0]}")
            return [t for t in ds[column] if isinstance(t, str) and t.strip()]
        return load

    if splits is None:
        return _HubSource(body, f"datasets hub '{body}' (column {column})", _AnySplit(loader),
                          licence="see the dataset card", origin=body, key=f"{key}?column={column}")
    return TextSource(body, f"datasets '{body}' (column {column})", {s: loader(s) for s in splits},
                      train_splits=tuple(splits), licence="the user's", origin=body, key=f"{key}?column={column}")


class _AnySplit(dict):
    """A split table that builds a loader for whatever split is asked for."""

    def __init__(self, factory):
        super().__init__()
        self._factory = factory

    def __missing__(self, split):
        self[split] = self._factory(split)
        return self[split]


class _HubSource(TextSource):
    """Hub split names are unknown until loaded: accept any; test/validation-like names are held out."""

    def split_names(self) -> list[str]:
        return []

    def role(self, split: str) -> str:
        return "evaluation" if split in _EVAL_SPLIT_NAMES else "train"

    def default_split(self, purpose: str | None = None) -> str:
        return "test" if purpose == "evaluation" else "train"


__all__ = ["hf_dataset_source", "text_file_source"]
