"""Crash safety of the host's writers: a kill (SIGKILL, no cleanup) at every state change leaves the
old or the new output, and the next run finishes or undoes it; only dead writers' debris is touched."""
import os
import tempfile

import pytest

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import atomic_directory, atomic_update, check_destination, recover_updates, \
    scratch_directory
from amoeba_plugin.export.atomic import _host, writer_token
from amoeba_plugin.testing import run_killed

WRITE = """
import sys
from pathlib import Path
from amoeba_plugin.export import atomic_directory
with atomic_directory(sys.argv[1] if len(sys.argv) > 1 else {dest!r}, overwrite=True) as tmp:
    (tmp / "a.txt").write_text("new")
    (tmp / "b.txt").write_text("new")
"""


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _state(dest):
    return {p.name: p.read_text() for p in sorted(dest.iterdir())} if dest.exists() else None


@pytest.mark.parametrize("point, expected", [("directory-written", "old"), ("directory-ready", "new"),
                                             ("directory-old-moved", "new")])
def test_overwrite_killed_at_each_step_is_recovered_by_the_next_run(tmp_path, point, expected):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    (dest / "b.txt").write_text("old")
    run_killed(WRITE.format(dest=str(dest)), point)
    if point == "directory-old-moved":
        assert not dest.exists()  # the crash state the fix is for: the export is only in a hidden directory
    assert _hidden(tmp_path), "the kill should leave debris to recover"

    with pytest.warns(RuntimeWarning):
        check_destination(dest, overwrite=True)  # any later run of this destination recovers first
    assert _state(dest) == {"a.txt": expected, "b.txt": expected}
    assert _hidden(tmp_path) == []


def test_a_killed_first_export_leaves_nothing_and_is_cleaned(tmp_path):
    dest = tmp_path / "out"
    run_killed(WRITE.format(dest=str(dest)), "directory-written")
    assert not dest.exists()
    check_destination(dest)
    assert not dest.exists() and _hidden(tmp_path) == []


def test_an_error_between_the_two_renames_restores_the_old_directory(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 3:  # partial -> ready, out -> old, ready -> out: fail the last
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        with atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    assert _state(dest) == {"a.txt": "old"} and _hidden(tmp_path) == []


def test_debris_of_live_or_foreign_writers_is_left_alone(tmp_path):
    dest = tmp_path / "out"
    mine = tmp_path / f".out.partial-{writer_token()}"  # this process: alive
    foreign = tmp_path / ".out.partial-otherhost-1-0123abcd"  # another host: cannot tell
    other = tmp_path / ".unrelated.partial-x"
    for p in (mine, foreign, other):
        p.mkdir()
    check_destination(dest)
    assert sorted(p.name for p in (mine, foreign, other) if p.exists()) == sorted([mine.name, foreign.name, other.name])


def test_legacy_old_copy_of_a_dead_writer_is_restored(tmp_path):
    dest = tmp_path / "out"
    legacy = tmp_path / f".out.old-{_dead_pid()}"
    legacy.mkdir()
    (legacy / "a.txt").write_text("old")
    with pytest.warns(RuntimeWarning, match="restored"):
        check_destination(dest, overwrite=True)
    assert _state(dest) == {"a.txt": "old"}


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_overwrite_never_replaces_the_working_directory_or_a_repository(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "work").mkdir()
    monkeypatch.chdir(repo / "work")
    for dest in (repo, repo / "work", tmp_path):
        with pytest.raises(AmoebaError, match="--overwrite would replace"):
            check_destination(dest, overwrite=True)
    assert (repo / ".git").is_dir() and (repo / "work").is_dir()


def test_bad_destination_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AmoebaError, match="is a file"):
        with atomic_directory(tmp_path / "file"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------------- atomic_update
UPDATE = """
from pathlib import Path
from amoeba_plugin.export import atomic_update
d = Path({dest!r})
with atomic_update(d) as stage:
    (stage / "folder").mkdir()
    (stage / "folder" / "w.txt").write_text("new")
    (stage / "manifest.json").write_text("new")
"""


def _bundle_like(tmp_path):
    d = tmp_path / "b"
    (d / "folder").mkdir(parents=True)
    (d / "folder" / "w.txt").write_text("old")
    (d / "manifest.json").write_text("old")
    (d / "keep.txt").write_text("keep")
    return d


def _view(d):
    return {"folder": (d / "folder" / "w.txt").read_text(), "manifest": (d / "manifest.json").read_text(),
            "keep": (d / "keep.txt").read_text()}


@pytest.mark.parametrize("point, expected", [("update-staged", "old"), ("update-committed", "new"),
                                             ("update-applying", "new")])
def test_multi_file_update_killed_at_each_step_is_all_or_nothing(tmp_path, point, expected):
    d = _bundle_like(tmp_path)
    run_killed(UPDATE.format(dest=str(d)), point)
    with pytest.warns(RuntimeWarning):
        recover_updates(d)
    assert _view(d) == {"folder": expected, "manifest": expected, "keep": "keep"}
    assert _hidden(d) == []


def test_multi_file_update_error_changes_nothing(tmp_path):
    d = _bundle_like(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_update(d) as stage:
            (stage / "manifest.json").write_text("new")
            raise RuntimeError("boom")
    assert _view(d) == {"folder": "old", "manifest": "old", "keep": "keep"} and _hidden(d) == []
    with atomic_update(d) as stage:
        (stage / "manifest.json").write_text("new")
    assert _view(d)["manifest"] == "new" and _hidden(d) == []


# ---------------------------------------------------------------------- scratch
def test_scratch_of_a_killed_writer_is_removed_by_the_next_run(tmp_path, monkeypatch):
    code = ("from amoeba_plugin.export import scratch_directory\n"
            "from amoeba_plugin.export.atomic import _stop_at\n"
            "with scratch_directory('kt') as d:\n    (d / 'big').write_text('x')\n    _stop_at('scratch')\n")
    run_killed(code, "scratch", TMPDIR=str(tmp_path))
    left = [p for p in tmp_path.iterdir() if p.name.startswith("amoeba-kt-")]
    assert len(left) == 1
    live = tmp_path / f"amoeba-kt-{_host()}-1-0000beef"  # pid 1 lives
    live.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_directory("kt") as d:
        assert d.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
