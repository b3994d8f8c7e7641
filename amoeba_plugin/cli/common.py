"""Helpers the ``amoeba`` commands share: a status line that respects ``--quiet``, model loading,
parameter-count lines."""
from __future__ import annotations

import click


def status(message: str):
    """A status line for the duration of a ``with`` block (none under ``amoeba --quiet``)."""
    from ..progress import status as _status_line

    quiet = bool(click.get_current_context().find_root().params.get("quiet"))
    return _status_line(message, enabled=not quiet)


def load(name: str):
    """``(model, tokenizer)`` of a hub name, a directory or ``amoeba-tiny-sotu``, with a status line."""
    from ..models import load_model

    with status(f"loading {name}"):
        return load_model(name)


def count(n: float) -> str:
    """``1.23M``-style."""
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def parameter_lines(anatomy, plan=None) -> list[str]:
    """The model's parameter counts, or the counts before -> after ``plan``."""
    from ..plan import Plan

    full = Plan.full(anatomy)
    p_all, p_ne = full.num_parameters(anatomy), full.num_parameters(anatomy, embeddings=False)
    if plan is None:
        return [f"parameters: {p_all:,} ({count(p_all)}); non-embedding: {p_ne:,} ({count(p_ne)})"]
    a_all, a_ne = plan.num_parameters(anatomy), plan.num_parameters(anatomy, embeddings=False)
    return [f"parameters:     {p_all:,} -> {a_all:,} (ratio {a_all / p_all:.4f})",
            f"non-embedding:  {p_ne:,} -> {a_ne:,} (ratio {a_ne / max(p_ne, 1):.4f})"]


__all__ = ["count", "load", "parameter_lines", "status"]
