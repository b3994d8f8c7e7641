"""Progress reporting: a tqdm bar for people, ``amoeba_on_progress`` events for plugins.

Events are throttled (at most about :data:`MAX_EVENTS` per stage, plus the first and the last), so
a plugin that logs every event does not slow a long loop down. Bars go to stderr and are hidden when
stderr is not a terminal; ``AMOEBA_PROGRESS=1`` forces them on, ``AMOEBA_PROGRESS=0`` off, and
``amoeba -q`` (:func:`set_quiet`) hides them with the status lines.

Long stages speak from the first second, also in logs: :func:`note` prints one line for a person,
:func:`expect` a stage's expected duration, and :func:`progress` adds a text line with the time left
every :data:`LINE_EVERY` seconds when bars are hidden (stderr is not a terminal) and the stage has
run for over :data:`LINE_AFTER` seconds. All of them are quiet under ``amoeba -q``.

One progress style: the ``amoeba`` CLI turns the libraries' own bars off (:func:`silence_library_bars`:
transformers' "Loading weights" / "Writing model shards", huggingface_hub's, datasets'), which would
otherwise overwrite its status lines on a terminal and still print into logs.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
MAX_EVENTS = 20
ENV = "AMOEBA_PROGRESS"
#: text progress lines (bars hidden): the first after this many seconds of a stage, then this often
LINE_AFTER, LINE_EVERY = 10.0, 30.0


@dataclass
class ProgressEvent:
    """One step of a long stage. ``total`` is None when unknown; ``step == total`` marks the end."""

    stage: str
    step: int
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None


_failed_hooks: set[str] = set()


def emit(event: ProgressEvent) -> None:
    """Fire ``amoeba_on_progress``; a plugin whose hook raises is warned about once, then ignored."""
    from .plugins import hook

    try:
        hook().amoeba_on_progress(event=event)
    except Exception as exc:  # a progress observer must never break a run
        key = type(exc).__name__ + str(exc)
        if key not in _failed_hooks:
            _failed_hooks.add(key)
            warnings.warn(f"amoeba: an amoeba_on_progress hook failed: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)


#: environment switches of the libraries' own progress bars (read when each library is imported)
LIBRARY_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Hide every bar of this process (``amoeba -q``), whatever ``AMOEBA_PROGRESS`` says."""
    global _quiet
    _quiet = bool(quiet)


def silence_library_bars() -> None:
    """Turn off the progress bars of transformers, huggingface_hub and datasets, now for those already
    imported and through their environment switches for those imported later. A switch the user set
    (``HF_HUB_DISABLE_PROGRESS_BARS=0``) is respected."""
    if any(os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off") for name in LIBRARY_ENV):
        return
    for name in LIBRARY_ENV:
        os.environ.setdefault(name, "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars as disable_datasets_bars

        disable_datasets_bars()


def format_duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_open_status: list[str] = []  # the status line being written ("message ..."), if any


def note(message: str, *, stream=None) -> None:
    """One line for a person on stderr, now (none under ``amoeba -q``); starts a new line when a status
    line is open. For what a long step is doing or will take: ``note("searchllm: 5,100 evaluations")``."""
    if _quiet:
        return
    stream = stream or sys.stderr
    if _open_status and _open_status[-1]:
        stream.write("\n")
        _open_status[-1] = ""  # the status line now ends on a line of its own
    stream.write(message.rstrip("\n") + "\n")
    stream.flush()


def expect(stage: str, seconds: float, detail: str = "") -> None:
    """Say how long ``stage`` is expected to take (a :func:`note`, and an event with the estimate)."""
    text = f"{stage}: expected to take about {format_duration(seconds)}" + (f" ({detail})" if detail else "")
    note(text)
    emit(ProgressEvent(stage, 0, None, text))


def bars_disabled() -> bool | None:
    """tqdm's ``disable`` argument: None means "hide on a non-terminal"."""
    if _quiet:
        return True
    value = os.environ.get(ENV)
    if value is None or value == "":
        return None
    return value.strip().lower() in ("0", "false", "no", "off")


def _should_fire(step: int, total: int | None) -> bool:
    if total:
        every = max(1, total // MAX_EVENTS)
        return step % every == 0 or step == total
    return step & (step - 1) == 0  # unknown total: 1, 2, 4, 8, ...


def progress(iterable: Iterable[T], stage: str, total: int | None = None, message: str = "") -> Iterator[T]:
    """Iterate ``iterable`` with a progress bar labelled ``stage`` and throttled progress events."""
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    emit(ProgressEvent(stage, 0, total, message))
    step = 0
    started = time.perf_counter()
    next_line = started + LINE_AFTER
    with tqdm(iterable, desc=stage, total=total, disable=bars_disabled(), file=sys.stderr,
              leave=False, dynamic_ncols=True) as bar:
        lines = bar.disable and not _quiet  # no bar to look at: a line now and then, for logs
        for item in bar:
            yield item
            step += 1
            if _should_fire(step, total):
                emit(ProgressEvent(stage, step, total, message))
            if lines and time.perf_counter() >= next_line:
                now = time.perf_counter()
                next_line = now + LINE_EVERY
                note(_line(stage, step, total, now - started))
    if not (total and step == total):
        emit(ProgressEvent(stage, step, step, message))  # the end, when the last event was not it


def _line(stage: str, step: int, total: int | None, elapsed: float) -> str:
    done = f"{step}/{total}" if total else f"{step}"
    left = f", about {format_duration(elapsed / step * (total - step))} left" if total and step else ""
    return f"{stage}: {done}, {format_duration(elapsed)} elapsed{left}"


def report(stage: str, step: int, total: int | None = None, message: str = "") -> None:
    """Fire one event from code that is not a loop over an iterable (throttled like :func:`progress`)."""
    if step == 0 or _should_fire(step, total):
        emit(ProgressEvent(stage, step, total, message))


@contextmanager
def status(message: str, *, stream=None, enabled: bool = True):
    """A one-line status for a step without a natural loop: ``message ...`` then ``done (1.2s)``."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    enabled = enabled and not _quiet
    if enabled:
        stream.write(f"{message} ...")
        stream.flush()
    _open_status.append(message if enabled else "")
    emit(ProgressEvent(message, 0, 1))
    try:
        yield
    except BaseException:
        if enabled:
            stream.write(" failed\n" if _open_status[-1] else f"{message}: failed\n")
            stream.flush()
        raise
    finally:
        still_open = _open_status.pop()
    interrupted = enabled and not still_open  # a note() ended the status line early
    if enabled:
        took = f"done ({time.perf_counter() - start:.1f}s)"
        stream.write(f"{message}: {took}\n" if interrupted else f" {took}\n")
        stream.flush()
    emit(ProgressEvent(message, 1, 1))
