"""Every file or folder a document cites exists in the repository (docs drift).

Checks README.md, every docs/*.md, benchmarks/README.md and plugins/README.md: each inline code span
or link target that looks like a repository path. A path with a slash is looked up from the
repository root, the document's folder, the host package and each plugin's package (docs cite
``pruning/allocation.py`` and ``amoeba_amoeballm/select.py`` that way), when its first folder is one
of the repository's (``..`` included: a doc citing ``../shared/notes.md`` cites outside the
repository). Paths whose first folder is not the repository's are outputs or another project's
files (``runs/tiny-50``, ``adapter/router.safetensors`` inside a bundle, FLAP's ``lib/prune.py``, hub
ids) and are skipped. A bare document name (``hooks.md``) must name a file in the repository.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", REPO / "plugins" / "README.md",
               *(REPO / "docs").glob("*.md")])
#: extensions that make a span without a slash a path candidate
SOURCE_EXTENSIONS = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".cfg"}
_CANDIDATE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def _bases(doc: Path) -> list[Path]:
    bases = [REPO, doc.parent, REPO / "amoeba_plugin"]
    for dist in sorted(d for d in (REPO / "plugins").iterdir() if d.is_dir()):
        bases += [dist, *(p for p in dist.iterdir() if p.is_dir() and p.name.startswith("amoeba_"))]
    return bases


def _tracked_names() -> set[str]:
    import os

    names = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules", "runs")]
        names.update(files)
        names.update(dirs)
    return names


def cited_paths(text: str) -> list[str]:
    """Inline code spans and link targets outside fenced code blocks that look like paths."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    paths = []
    for item in found:
        item = item.strip()
        if "://" in item or item.startswith(("-", "~", "/", "$", ".venv")) or not _CANDIDATE.match(item):
            continue
        if "/" in item or Path(item).suffix in SOURCE_EXTENSIONS:
            paths.append(item)
    return paths


def missing_paths(doc: Path, names: set[str]) -> list[str]:
    bases = _bases(doc)
    missing = []
    for item in cited_paths(doc.read_text()):
        path = item.rstrip("/")
        if "/" not in path:
            if path.endswith(".md") and path not in names:
                missing.append(item)
            continue
        first = path.split("/", 1)[0]
        if not any((base / first).is_dir() for base in bases):
            continue  # an output folder, another project's file, a hub id: not a repository path
        if not any((base / path).exists() for base in bases):
            missing.append(item)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_cited_paths_exist(doc):
    missing = missing_paths(doc, _tracked_names())
    assert not missing, f"{doc.relative_to(REPO)} cites paths that are not in the repository: {missing}"


def test_the_checker_finds_a_missing_path(tmp_path):
    assert sorted(cited_paths("see `docs/nope.md` and [x](scripts/gone.sh), not `runs/out` or\n```\ncode/x.py\n```")) \
        == ["docs/nope.md", "runs/out", "scripts/gone.sh"]
    names = _tracked_names()
    assert "conftest.py" in names
    fake = tmp_path / "fake.md"
    fake.write_text("`docs/hooks.md` `docs/nope.md` `pruning/allocation.py` `runs/tiny-50` `lib/prune.py` "
                    "`../../shared/notes.md` `hooks.md` `nope.md` `conftest.py`")
    assert missing_paths(fake, names) == ["docs/nope.md", "../../shared/notes.md", "nope.md"]


def test_evaluation_doc_lists_every_packaged_task():
    """docs/evaluation.md's `amoeba tasks` listing and its counts follow the packaged folder."""
    from amoeba_plugin.eval.lm_eval import packaged_tasks

    found = packaged_tasks()
    text = (REPO / "docs" / "evaluation.md").read_text()
    listing = text.split("$ amoeba tasks", 1)[1].split("```", 1)[0]
    assert sorted(re.findall(r"^(amoeba_\w+)\s", listing, flags=re.M)) == sorted(found)
    assert f"{len(found)} names searched" in text
    tasks = sum(1 for info in found.values() if info["kind"] != "group")
    words = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"{words.get(tasks, tasks)} packaged tasks" in text
