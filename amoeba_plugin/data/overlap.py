"""The overlap policy: never evaluate on text a model saw, calibrating or training.

Every output records the text it saw in its provenance record (a plan's ``provenance``, an export's
``info``): ``record["data"]["calibration"]`` (written by :func:`amoeba_plugin.pipeline.run_method`)
and ``record["data"]["seen"]``, a list of ``{"source": "name:split", "role": ..., "by": ...}``
entries that :func:`record_seen_text` appends (training, recovery, distillation, or calibration a
plugin did outside ``run_method``). :func:`seen_texts` reads both back; :func:`check_unseen`
refuses evaluation text that is one of them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

from ..errors import DataError
from .specs import TextSpec, resolve_source, spec_of

#: what a model may have done with a text; any other role string is accepted too
ROLES = ("calibration", "training", "recovery", "distillation")


def _canonical(text) -> str:
    """``name:split`` of a TextSpec, a spec string or a ``{"source": ...}`` record."""
    if isinstance(text, dict):
        text = text.get("source")
    if isinstance(text, TextSpec):
        return str(text)
    try:
        return str(TextSpec.resolve(str(text), "calibration"))
    except Exception:  # a source this machine cannot resolve (a file since moved): keep it as written
        return str(text)


@lru_cache(maxsize=64)
def _document_hashes(key: tuple[str, str], spec: TextSpec) -> frozenset[str]:
    return frozenset(hashlib.sha1(d.strip().encode()).hexdigest() for d in spec.source.documents(spec.split) if d.strip())


def shared_documents(a, b) -> int:
    """How many documents texts ``a`` and ``b`` share (all of them when they are the same text):
    a document split of a corpus (``brown-split:train``) overlaps the corpus (``brown:test``)."""
    sa, sb = _resolve(a, "calibration"), _resolve(b, "evaluation")
    if sa is None or sb is None:  # unresolvable on this machine: compare the names
        return int(_canonical(a) == _canonical(b))
    if sa.key == sb.key:
        return 1
    return len(_hashes(sa) & _hashes(sb))


def _resolve(text, purpose: str) -> TextSpec | None:
    """A recorded text back as a TextSpec (a file source is recorded as ``file:PATH:text``)."""
    if isinstance(text, dict):
        text = text.get("source")
    for candidate in (text, str(text).rsplit(":", 1)[0] if str(text).startswith("file:") else None):
        if candidate is None:
            continue
        try:
            return TextSpec.resolve(candidate, purpose)
        except Exception:
            continue
    return None


def _hashes(spec: TextSpec) -> frozenset[str]:
    try:
        return _document_hashes(spec.key, spec)
    except Exception:  # a source that cannot be read now: no content check
        return frozenset()


def record_seen_text(record: dict, texts: Iterable, role: str, by: str | None = None) -> dict:
    """Add ``texts`` (TextSpecs, spec strings, or ``{"source": ...}`` records) to ``record``'s
    ``data.seen`` list as ``role`` (``training``, ``recovery``, ...), each once; returns ``record``.

    Call it on a plan's ``provenance`` or an export's ``info`` whenever a model is calibrated,
    trained or recovered on text outside :func:`~amoeba_plugin.pipeline.run_method`'s calibration."""
    if not isinstance(role, str) or not role:
        raise ValueError("role must be a non-empty string such as 'training'")
    seen = record.setdefault("data", {}).setdefault("seen", [])
    have = {(e.get("source"), e.get("role")) for e in seen if isinstance(e, dict)}
    for text in texts or ():
        entry = {"source": _canonical(text), "role": role}
        if by:
            entry["by"] = by
        if (entry["source"], role) not in have:
            seen.append(entry)
            have.add((entry["source"], role))
    return record


def seen_texts(record: dict | None) -> list[dict]:
    """Every text ``record`` says its model saw: ``[{"source", "role", ...}]`` (calibration first)."""
    data = (record or {}).get("data")
    if not isinstance(data, dict):
        return []
    found = []
    calibration = data.get("calibration")
    if isinstance(calibration, dict) and isinstance(calibration.get("source"), str):
        found.append({"source": calibration["source"], "role": "calibration"})
    runs = data.get("recovery")  # amoeba_plugin.recovery records its training text there
    for run in runs if isinstance(runs, list) else [runs] if isinstance(runs, dict) else []:
        for source in run.get("sources") or [] if isinstance(run, dict) else []:
            if isinstance(source, str) and not any(f["source"] == source for f in found):
                found.append({"source": source, "role": "training", "by": "recovery"})
    for entry in data.get("seen") or []:
        if isinstance(entry, dict) and isinstance(entry.get("source"), str):
            if not any(f["source"] == entry["source"] and f["role"] == entry.get("role") for f in found):
                found.append({k: v for k, v in entry.items() if k in ("source", "role", "by")})
    return found


def check_unseen(seen: Iterable, evaluation: str | TextSpec | None, allow: bool = False) -> None:
    """Refuse to evaluate on text in ``seen`` (records from :func:`seen_texts`, or spec strings:
    calibration text) unless ``allow``."""
    if evaluation is None or allow:
        return
    for entry in seen or ():
        role = entry.get("role", "calibration") if isinstance(entry, dict) else "calibration"
        source = entry.get("source") if isinstance(entry, dict) else entry
        if role == "calibration":
            check_disjoint(source, evaluation)
        shared = shared_documents(source, evaluation)
        if shared:
            by = f" by {entry['by']}" if isinstance(entry, dict) and entry.get("by") else ""
            what = "is" if _canonical(source) == _canonical(evaluation) else f"shares {shared} document(s) with"
            raise DataError(f"the evaluation text '{_canonical(evaluation)}' {what} text this model was "
                            f"{'calibrated' if role == 'calibration' else 'trained'} on ({role}{by} on '{source}'): "
                            "its perplexity would flatter the result",
                            f"evaluate on held-out text ({_held_out(evaluation)}), or pass "
                            "--allow-eval-on-calibration (allow_calibration_overlap=True) to do it anyway")


def _held_out(evaluation) -> str:
    try:
        source, _ = resolve_source(evaluation, purpose="evaluation")
        names = [spec_of(source, s) for s in source.split_names() if source.role(s) != "train"]
    except Exception:
        names = []
    return ", ".join(names) or "brown, moby-dick or sotu:validation"


def check_disjoint(calibration: str | TextSpec | None, evaluation: str | TextSpec | None,
                   allow: bool = False) -> None:
    """Refuse to evaluate on the text a run calibrated on (the same source and split).

    Calibration windows are sampled from the whole split, so any overlap would let pruning decisions
    see the evaluation text and flatter the result. ``allow=True`` lets it pass on purpose.
    """
    if calibration is None or evaluation is None or allow:
        return
    cal_source, cal_split = resolve_source(calibration, purpose="calibration")
    eval_source, eval_split = resolve_source(evaluation, purpose="evaluation")
    if (cal_source.key or cal_source.name) == (eval_source.key or eval_source.name) and cal_split == eval_split:
        held_out = [spec_of(eval_source, s) for s in eval_source.split_names() if eval_source.role(s) != "train"]
        raise DataError(f"the evaluation text '{spec_of(eval_source, eval_split)}' is the calibration text "
                        f"('{calibration}'): the pruning decisions saw it, so its perplexity would flatter the result",
                        f"evaluate on held-out text ({', '.join(held_out) or 'brown, moby-dick or sotu:validation'}), "
                        "or pass --allow-eval-on-calibration (allow_calibration_overlap=True) to do it anyway")


__all__ = ["ROLES", "check_disjoint", "check_unseen", "record_seen_text", "seen_texts", "shared_documents"]
