"""Crash-safe writing: whole directories, multi-file updates and scratch space, each recoverable.

Every state change on disk is written somewhere hidden first and committed by one rename; what a
killed process leaves behind is named after its writer (``<host>-<pid>-<random>``), so the next run
can tell its own debris (writer dead) from another process's work in progress (writer alive, or on
another host: left alone) and finish or undo it.

* :func:`atomic_directory`: a new or replaced directory. Steps: write ``.NAME.partial-T``, rename it
  to ``.NAME.ready-T`` (complete), move the old ``NAME`` to ``.NAME.old-T``, rename ``.NAME.ready-T``
  to ``NAME``, delete ``.NAME.old-T``. :func:`recover_destination` (run by every writer and check of
  ``NAME``) finishes a complete one and deletes an incomplete one: after a kill at any step the
  destination holds either the old or the new directory, never nothing.
* :func:`atomic_update`: several files or folders replaced inside an existing directory together.
  They are staged in ``.amoeba-update-T/``; writing the journal there is the commit (one rename);
  then they move into place. :func:`recover_updates` replays a committed update and deletes an
  uncommitted one, so readers see all of the change or none of it.
* :func:`scratch_directory`: temporary space in the system temp folder, removed on exit, and
  removed by the next run when its writer was killed.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import AmoebaError

#: the journal whose arrival commits an :func:`atomic_update`
JOURNAL = ".amoeba-commit.json"
_TRASH = ".amoeba-trash"
_UPDATE = ".amoeba-update-"
_TOKEN = re.compile(r"^(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-(?P<nonce>[0-9a-f]{8})$")
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


# ---------------------------------------------------------------------- who wrote it
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def writer_token() -> str:
    """``<host>-<pid>-<random>``: names a hidden file after the process that writes it."""
    return f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_dead(token: str) -> bool:
    """True only when ``token`` names a process of this host that no longer runs (clearly debris)."""
    match = _TOKEN.match(token)
    if match is None or match["host"] != _host():
        return False
    return not _pid_alive(int(match["pid"]))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _say(message: str) -> None:
    warnings.warn(f"amoeba: {message}", RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------- whole directories
def _siblings(dest: Path) -> dict[str, dict[str, Path]]:
    """The hidden siblings of ``dest`` by writer token: ``{token: {"partial"|"ready"|"old": path}}``."""
    found: dict[str, dict[str, Path]] = {}
    prefix = f".{dest.name}."
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return found
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        stage, _, token = p.name[len(prefix):].partition("-")
        if stage in ("partial", "ready", "old") and _TOKEN.match(token):
            found.setdefault(token, {})[stage] = p
    return found


def recover_destination(destination: str | os.PathLike) -> list[str]:
    """Finish or undo what killed writers of ``destination`` left; returns what it did (one line each).

    A complete new directory (``ready``) is moved into place, an incomplete one (``partial``) is
    deleted, an old copy kept aside (``old``) is restored when the destination is missing and
    deleted otherwise. Only debris of dead writers on this host is touched.
    """
    dest = Path(destination).expanduser().resolve()
    done: list[str] = []
    for token, parts in sorted(_siblings(dest).items(), key=lambda kv: min(_mtime(p) for p in kv[1].values())):
        if not writer_dead(token):
            continue
        try:
            done += _recover_one(dest, token, parts)
        except FileNotFoundError:  # another process (a rank of the same launch) recovered it first
            continue
    for p in list(dest.parent.iterdir()) if dest.parent.is_dir() else []:  # older releases: .NAME.old-PID
        match = _LEGACY_OLD.match(p.name)
        if match and match["name"] == dest.name and not _pid_alive(int(match["pid"])) and p.is_dir():
            if dest.exists():
                _remove(p)
            else:
                os.replace(p, dest)
                done.append(f"restored {dest} from the copy an interrupted --overwrite kept aside")
    for line in done:
        _say(line)
    return done


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _recover_one(dest: Path, token: str, parts: dict[str, Path]) -> list[str]:
    """One killed writer's debris: finish a complete write, restore or drop an old copy, drop a partial one."""
    done = []
    ready, old, partial = parts.get("ready"), parts.get("old"), parts.get("partial")
    if ready is not None:
        old = old or dest.with_name(f".{dest.name}.old-{token}")
        if dest.exists() and not old.exists():
            os.replace(dest, old)
        if not dest.exists():
            os.replace(ready, dest)
            done.append(f"finished the interrupted write of {dest}")
        else:
            _remove(ready)
    if old is not None and old.exists():
        if dest.exists():
            _remove(old)
        else:
            os.replace(old, dest)
            done.append(f"restored {dest} from the copy an interrupted --overwrite kept aside")
    if partial is not None:
        _remove(partial)
        done.append(f"removed {partial.name}, left by a killed writer")
    return done


def check_destination(destination: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise if ``destination`` cannot receive an export. Creates nothing; it first finishes or undoes
    an interrupted earlier write of the same destination (see :func:`recover_destination`)."""
    dest = Path(destination).expanduser().resolve()
    if dest.parent.is_dir():
        recover_destination(dest)
    if dest.exists() and not dest.is_dir():
        raise AmoebaError(f"{dest} exists and is a file", "choose a directory path for the output")
    from ..statefiles import check_writable

    check_writable(dest, "output directory")  # a parent that is a file, or read-only: before any work
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise AmoebaError(f"output directory {dest} already exists and is not empty",
                          "choose a new directory or pass --overwrite")
    if overwrite and dest.exists() and _precious(dest):
        raise AmoebaError(f"--overwrite would replace {dest}, which holds the working directory, the home "
                          "directory or a git repository", "choose a directory of its own for the output")
    return dest


def _precious(dest: Path) -> bool:
    """Directories ``--overwrite`` never replaces: the working or home directory, their ancestors, a repository."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    return dest in (cwd, home) or dest in cwd.parents or dest in home.parents or (dest / ".git").exists()


def _stop_at(point: str) -> None:
    """Test hook: ``AMOEBA_TEST_KILL_AT=point`` makes the process kill itself at that state change,
    as a crash or ``kill -9`` would (no cleanup runs)."""
    if os.environ.get("AMOEBA_TEST_KILL_AT") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_directory(destination: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory; on success it replaces ``destination``, on error it vanishes.

    A kill at any point leaves the old destination (or none, if there was none) or the new one;
    the next write or check of the destination cleans up (see the module docstring)."""
    dest = check_destination(destination, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = writer_token()
    tmp = dest.with_name(f".{dest.name}.partial-{token}")
    tmp.mkdir()
    try:
        yield tmp
        _stop_at("directory-written")
        ready = dest.with_name(f".{dest.name}.ready-{token}")
        os.replace(tmp, ready)
        tmp = ready
        _stop_at("directory-ready")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{token}")
            os.replace(dest, old)
            _stop_at("directory-old-moved")
            os.replace(ready, dest)
            _remove(old)
        else:
            os.replace(ready, dest)
    except BaseException:
        old = dest.with_name(f".{dest.name}.old-{token}")
        if old.exists() and not dest.exists():
            os.replace(old, dest)  # failed between the two renames: the old copy goes back
        _remove(tmp)
        raise


# ---------------------------------------------------------------------- several files at once
def _apply(directory: Path, stage: Path) -> None:
    """Move a committed update's entries into place (idempotent: a replay skips what moved)."""
    names = json.loads((stage / JOURNAL).read_text())["names"]
    trash = stage / _TRASH
    for name in names:
        src, dst = stage / name, directory / name
        if not src.exists() and not src.is_symlink():
            continue
        try:
            if dst.is_dir() and not dst.is_symlink():
                trash.mkdir(exist_ok=True)
                _remove(trash / name)
                os.replace(dst, trash / name)
            os.replace(src, dst)
        except FileNotFoundError:  # another process replaying the same update moved it first
            continue
        _stop_at("update-applying")
    shutil.rmtree(stage, ignore_errors=True)


def recover_updates(directory: str | os.PathLike) -> list[str]:
    """Replay committed :func:`atomic_update` s of killed writers in ``directory`` and delete the
    uncommitted ones; returns what it did. Safe to call on every open."""
    directory = Path(directory)
    done: list[str] = []
    try:
        stages = sorted(p for p in directory.iterdir() if p.name.startswith(_UPDATE) and p.is_dir())
    except OSError:
        return done
    for stage in stages:
        if not writer_dead(stage.name[len(_UPDATE):]):
            continue
        if (stage / JOURNAL).is_file():
            _apply(directory, stage)
            done.append(f"finished an interrupted update of {directory}")
        else:
            shutil.rmtree(stage, ignore_errors=True)
            done.append(f"discarded an unfinished update of {directory} (nothing had changed)")
    for line in done:
        _say(line)
    return done


@contextmanager
def atomic_update(directory: str | os.PathLike):
    """Yield a staging directory; whatever is written there replaces the same names in ``directory``
    together (files and folders), or, on error or a kill before the commit, not at all."""
    directory = Path(directory)
    recover_updates(directory)
    stage = directory / f"{_UPDATE}{writer_token()}"
    stage.mkdir()
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir() if p.name not in (JOURNAL, _TRASH))
        _stop_at("update-staged")
        pending = stage / (JOURNAL + ".tmp")
        pending.write_text(json.dumps({"names": names}))
        os.replace(pending, stage / JOURNAL)  # the commit
        _stop_at("update-committed")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _apply(directory, stage)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write one file through a writer-named temporary file and a rename: never half written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{writer_token()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- scratch space
@contextmanager
def scratch_directory(prefix: str):
    """A temporary directory ``<tmp>/amoeba-<prefix>-<writer>``, removed on exit; the scratch
    directories of killed writers with the same prefix are removed first."""
    root = Path(tempfile.gettempdir())
    head = f"amoeba-{prefix}-"
    for p in root.glob(f"{head}*"):
        if p.is_dir() and writer_dead(p.name[len(head):]):
            shutil.rmtree(p, ignore_errors=True)
    path = root / f"{head}{writer_token()}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["JOURNAL", "atomic_directory", "atomic_update", "check_destination", "recover_destination",
           "recover_updates", "scratch_directory", "write_text_atomic", "writer_dead", "writer_token"]
