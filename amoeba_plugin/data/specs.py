"""Text specs: the syntax a user writes (``sotu:train``, ``file:PATH``, ``hf:NAME:SPLIT``, ...) and
what it resolves to, a :class:`TextSpec` (source + split), looked up once per run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UnknownNameError
from .sources import TextSource
from .user import _DATASETS_BUILDERS, _split_options, hf_dataset_source, text_file_source

SPEC_SYNTAX = ("NAME[:SPLIT] (a registered source, e.g. sotu:train), file:PATH, json:PATH, parquet:PATH, "
               "csv:PATH, text:PATH, hf:DATASET[:SPLIT], or the path of an existing text file")


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
    """``(source, split)`` for a spec (see :mod:`amoeba_plugin.data`); checks that the split exists.

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


def spec_of(source: TextSource, split: str) -> str:
    return f"{source.name}:{split}"


def canonical_spec(spec: str | TextSpec, purpose: str) -> str:
    """``name:split`` of what a spec resolves to (a file source is named by its path)."""
    source, split = resolve_source(spec, purpose=purpose)
    return spec_of(source, split)


__all__ = ["SPEC_SYNTAX", "TextSpec", "canonical_spec", "resolve_source", "spec_of"]
