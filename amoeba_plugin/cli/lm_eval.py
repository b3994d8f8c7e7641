"""``amoeba-lm-eval``: lm-eval's own command line, with the ``amoeba`` model and the packaged tasks.

lm-eval has no plugin discovery, so this script (1) registers the lm-eval model ``amoeba``, (2) adds
the packaged tasks folder (``amoeba tasks --path``) to ``--include_path`` and (3) hands over to
lm-eval's CLI entry point (``lm_eval.__main__.cli_evaluate``, what the ``lm_eval``/``lm-eval`` scripts
run). Everything else (subcommands ``run``, ``ls``, ``validate``, every flag, the printed table) is
lm-eval's::

    amoeba-lm-eval run --model amoeba --model_args pretrained=amoeba-tiny-sotu \\
        --tasks amoeba_sotu_ppl,amoeba_sotu_cloze --limit 20
    amoeba-lm-eval ls tasks

When you pass ``--include_path`` yourself, it is kept and the packaged folder is added next to it
(lm-eval's ``--include_path`` takes one folder; several may be joined with ``os.pathsep`` here).
"""
from __future__ import annotations

import os
import sys

PROG = "amoeba-lm-eval"
#: lm-eval's subcommands; each one's parser has --include_path
_SUBCOMMANDS = ("run", "ls", "validate")


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _user_include_path(argv: list[str]) -> str | None:
    return _flag_value(argv, "--include_path")


#: --tasks values that list tasks instead of naming them (older lm-eval)
_LISTINGS = ("list", "list_groups", "list_subtasks", "list_tags")


def check_run(argv: list[str]) -> None:
    """What lm-eval would find only after loading the model: unknown ``--tasks`` names (checked with
    lm-eval's TaskManager, packaged tasks and ``--include_path`` included) and an ``--output_path``
    that cannot be written. Raises :class:`~amoeba_plugin.errors.AmoebaError`."""
    from ..eval.lm_eval import parse_tasks, task_manager
    from ..statefiles import check_writable

    if argv and argv[0] in ("ls", "validate"):
        return
    tasks = _flag_value(argv, "--tasks")
    names = [n for n in parse_tasks(tasks) if n not in _LISTINGS]
    if names:
        task_manager(names, _user_include_path(argv))
    output = _flag_value(argv, "--output_path") or _flag_value(argv, "-o")
    if output:
        check_writable(output, "--output_path", directory=not output.endswith(".json"))


def prepare_argv(argv: list[str], tasks_folder: str) -> tuple[list[str], bool]:
    """``(argv, patch)``: argv with ``--include_path tasks_folder`` appended when the user gave none (and
    the command is one that takes it); ``patch`` says the user gave their own, so the packaged folder
    has to be added to lm-eval's TaskManager instead (see :func:`_add_packaged_tasks`)."""
    argv = list(argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        return argv, False
    command = argv[0] if argv[0] in _SUBCOMMANDS else ("run" if len(argv) > 1 else None)
    if command is None:
        return argv, False
    if argv == [command]:  # bare subcommand: lm-eval prints that subcommand's help
        return argv, False
    if _user_include_path(argv) is not None:
        return argv, True
    return [*argv, "--include_path", tasks_folder], False


def _add_packaged_tasks(tasks_folder: str) -> None:
    """Make every lm-eval TaskManager built in this process also read ``tasks_folder`` (and split an
    ``os.pathsep``-joined ``--include_path`` into folders)."""
    import lm_eval.tasks
    from lm_eval.tasks.manager import TaskManager

    class WithAmoebaTasks(TaskManager):
        def __init__(self, *args, include_path=None, **kwargs):
            paths = include_path if isinstance(include_path, (list, tuple)) else (
                [p for p in str(include_path).split(os.pathsep) if p] if include_path else [])
            if tasks_folder not in [str(p) for p in paths]:
                paths = [*paths, tasks_folder]
            super().__init__(*args, include_path=paths, **kwargs)

    lm_eval.tasks.TaskManager = WithAmoebaTasks


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``amoeba-lm-eval``)."""
    from ..errors import AmoebaError
    from ..eval.lm_eval import register_lm_eval_model, require_lm_eval, tasks_dir

    try:
        require_lm_eval()
    except AmoebaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    register_lm_eval_model()
    argv = sys.argv[1:] if argv is None else argv
    if not any(a in ("-h", "--help") for a in argv):
        try:
            check_run(argv)  # an unknown task or an unwritable output fails before the model loads
        except AmoebaError as exc:
            if os.environ.get("AMOEBA_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
                raise
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            sys.exit(2)
    args, patch = prepare_argv(argv, tasks_dir())
    if patch:
        _add_packaged_tasks(tasks_dir())
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [PROG, *args]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    except AmoebaError as exc:  # raised while loading the model: one line, as `amoeba` prints it
        if os.environ.get("AMOEBA_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
