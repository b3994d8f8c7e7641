"""Writing a healed model: atomically, with the recovery in its provenance.

The output directory is written through :func:`amoeba_plugin.export.atomic_directory` (a temporary
sibling renamed into place), like every export. Provenance goes where the host reads it: the
recovery record is appended to ``info["recovery"]`` of ``amoeba_export.json``, and its training text
to ``info["data"]["recovery"]``, where :func:`amoeba_plugin.pipeline.calibration_texts` finds it, so
``amoeba eval`` refuses to report perplexity on text the model was trained on. The model card gets a
"Recovery" section.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..export import atomic_directory
from ..export.card import RECOVERED, UNCHANGED, recovery_section
from ..export.writers import EXPORT_INFO


def recovery_records(info: dict | None) -> list[dict]:
    """The recovery records of an export's ``info`` (oldest first)."""
    runs = (info or {}).get("recovery")
    return list(runs) if isinstance(runs, list) else [runs] if isinstance(runs, dict) else []


def add_recovery(info: dict, record: dict) -> dict:
    """``info`` (an export's ``info``) with ``record`` appended to its recovery records and its training
    text to the ``data`` record."""
    info = json.loads(json.dumps(info or {}, default=str))
    info["recovery"] = recovery_records(info) + [record]
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    old = data.get("recovery")
    old = old if isinstance(old, list) else [old] if isinstance(old, dict) else []
    data["recovery"] = old + [{"sources": list(record.get("sources") or []), "tokens": record.get("tokens"),
                               "loss": record.get("loss")}]
    info["data"] = data
    return info


def save_recovered(model, tokenizer, destination: str | os.PathLike, record: dict,
                   base: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``destination`` atomically.

    ``base`` is the export directory the model was loaded from: its ``plan.json`` is kept, its
    ``amoeba_export.json`` is carried over with ``record`` added, and its model card gets the
    Recovery section. Without ``base`` a short card and export record are written.
    """
    base = Path(base) if base is not None and Path(base).is_dir() else None
    exported = {}
    if base is not None and (base / EXPORT_INFO).is_file():
        try:
            exported = json.loads((base / EXPORT_INFO).read_text())
        except ValueError:
            exported = {}
    exported = exported if isinstance(exported, dict) else {}
    info = add_recovery(exported.get("info") if isinstance(exported.get("info"), dict) else {}, record)
    with atomic_directory(destination, overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if base is not None and (base / "plan.json").is_file():
            shutil.copy2(base / "plan.json", tmp / "plan.json")
        out = {**exported, "format": exported.get("format", "amoeba-export"), "recovered": True, "info": info,
               "model_type": model.config.model_type, "model_class": type(model).__name__,
               "architecture": "amoeba" if model.config.model_type == "amoeba" else "stock"}
        (tmp / EXPORT_INFO).write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card(base, model, info), encoding="utf-8")
    return Path(destination).expanduser().resolve()


def _card(base: Path | None, model, info: dict) -> str:
    section = recovery_section(info["recovery"])
    old = (base / "README.md").read_text(encoding="utf-8") if base is not None and (base / "README.md").is_file() \
        else None
    if old:
        old = old.replace(UNCHANGED, RECOVERED)
        head, sep, rest = old.partition("## Recovery")
        if sep:  # an earlier recovery's section: replace it with the full list
            after = rest.split("\n## ", 1)
            old = head + (("## " + after[1]) if len(after) > 1 else "")
        marker = "## How to use"
        return old.replace(marker, section + "\n" + marker, 1) if marker in old else old.rstrip() + "\n\n" + section
    amoeba = model.config.model_type == "amoeba"
    lines = ["---", "library_name: transformers", "tags:", "- amoeba-plugin", "- pruned", "- recovered",
             "pipeline_tag: text-generation", "---", "", f"# {type(model).__name__} (recovered)", "", section,
             "## How to use", "", "```python"]
    if amoeba:
        lines.append("import amoeba_plugin  # noqa: F401  (registers model_type \"amoeba\")")
    lines += ["from transformers import AutoModelForCausalLM", "",
              "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\")", "```", ""]
    return "\n".join(lines)


__all__ = ["add_recovery", "recovery_records", "save_recovered"]
