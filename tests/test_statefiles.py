"""State files read so damage is one clear error (naming the file and the fix), and outputs checked for
writability before any work: the host readers every plugin uses, and the commands that write."""
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from amoeba_plugin.cli.main import cli
from amoeba_plugin.errors import AmoebaError, CorruptFileError
from amoeba_plugin.statefiles import (
    check_tensors_file,
    check_torch_file,
    check_writable,
    read_json,
    read_jsonl,
    read_tensors,
    read_torch,
)
from amoeba_plugin.testing import save_tiny
from amoeba_plugin.testing import assert_one_error_line


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------- JSON and JSON lines
@pytest.mark.parametrize("content, reason", [
    (b'{"step": 3, "conf', "not valid JSON"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "holds a list, expected an object"),
])
def test_damaged_json_names_the_file_and_the_fix(tmp_path, content, reason):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=reason) as err:
        read_json(path, "search checkpoint", "pass --restart")
    assert str(path) in str(err.value) and "search checkpoint" in str(err.value) and err.value.fix == "pass --restart"
    assert path.read_bytes() == content  # nothing lost


def test_missing_json_is_the_default_or_an_error(tmp_path):
    assert read_json(tmp_path / "none.json", default=None) is None
    with pytest.raises(CorruptFileError, match="missing"):
        read_json(tmp_path / "none.json", "bundle manifest")
    assert read_json(_write(tmp_path / "ok.json", '{"a": 1}'), "x") == {"a": 1}


def test_a_log_may_lose_its_last_line_mid_write_but_not_a_middle_one(tmp_path):
    torn = _write(tmp_path / "log.jsonl", '{"g": 0}\n\n{"g": 1}\n{"g": 2, "be')
    assert read_jsonl(torn, torn_tail_ok=True) == [{"g": 0}, {"g": 1}]
    with pytest.raises(CorruptFileError, match="line 4 is not valid JSON"):
        read_jsonl(torn)
    middle = _write(tmp_path / "mid.jsonl", '{"g": 0}\ngarbage\n{"g": 2}\n')
    with pytest.raises(CorruptFileError, match=f"{middle}.*line 2"):
        read_jsonl(middle, "search log", torn_tail_ok=True)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


# ---------------------------------------------------------------------- tensors and torch files
def test_truncated_safetensors_and_torch_files_are_clear_errors(tmp_path):
    tensors = {"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(8, 8)}
    good = tmp_path / "good.safetensors"
    save_file(tensors, str(good))
    assert torch.equal(read_tensors(good)["a"], tensors["a"])
    check_tensors_file(good)
    cut = _truncate(good, tmp_path / "cut.safetensors")
    for reader in (read_tensors, check_tensors_file):
        with pytest.raises(CorruptFileError, match=f"training checkpoint {cut} is damaged") as err:
            reader(cut, "training checkpoint", "pass --restart")
        assert err.value.fix == "pass --restart"
    garbage = _write(tmp_path / "garbage.safetensors", "not tensors at all")
    with pytest.raises(CorruptFileError, match="damaged"):
        check_tensors_file(garbage)

    opt = tmp_path / "optimizer.pt"
    torch.save({"state": {0: torch.zeros(100)}, "lr": 0.1}, opt)
    assert read_torch(opt)["lr"] == 0.1
    check_torch_file(opt)
    cut_opt = _truncate(opt, tmp_path / "cut.pt")
    for reader in (read_torch, check_torch_file):
        with pytest.raises(CorruptFileError, match=f"{cut_opt} is damaged"):
            reader(cut_opt, "optimizer state")
    with pytest.raises(CorruptFileError, match="missing"):
        read_tensors(tmp_path / "absent.safetensors")


# ---------------------------------------------------------------------- writability
def test_check_writable_refuses_a_parent_that_is_a_file_and_creates_nothing(tmp_path):
    blocker = _write(tmp_path / "afile", "x")
    with pytest.raises(AmoebaError, match="afile is a file, not a directory"):
        check_writable(blocker / "out" / "deeper")
    with pytest.raises(AmoebaError, match="exists and is a file"):
        check_writable(blocker)
    assert check_writable(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the probe left nothing behind


def test_check_writable_refuses_a_read_only_place(tmp_path):
    with pytest.raises(AmoebaError, match="not writable"):
        check_writable("/proc/amoeba-output")  # a file system nobody may create files in, root included
    if os.geteuid() != 0:  # root writes into a mode-555 directory anyway
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(AmoebaError, match="not writable"):
                check_writable(locked / "out")
        finally:
            locked.chmod(0o755)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.mark.parametrize("command", [["prune", "--budget", "0.8", "--no-eval"], ["export", "--plan", "PLAN"]])
def test_commands_that_write_check_the_output_before_loading(tiny_dir, tmp_path, command):
    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.models import load_model
    from amoeba_plugin.plan import Plan

    plan = Plan.full(anatomy_of(load_model(tiny_dir)[0])).save(tmp_path / "plan.json")
    blocker = _write(tmp_path / "afile", "x")
    args = [a if a != "PLAN" else plan for a in command]
    result = run(args[0], tiny_dir, *args[1:], "--output", blocker / "out")
    assert_one_error_line(result, "afile is a file, not a directory", "Fix:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "plan.json"]


def _write(path, text):
    path.write_text(text)
    return path


def _truncate(source, dest):
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) * 2 // 3])
    return dest
