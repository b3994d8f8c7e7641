"""The text-source contract: a corpus with named splits, and which of them calibration may read."""
from __future__ import annotations

from collections.abc import Callable

from ..errors import DataError


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


__all__ = ["TextSource"]
