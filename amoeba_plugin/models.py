"""Model names and paths: the embedded model, the fetched SmolLM2 cache, local directories, hub ids.

Every place that accepts a model goes through :func:`resolve_model_path` / :func:`load_model`, so a
typo or a broken file gives the same one-line error (problem + fix) everywhere.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import CorruptFileError, ModelNotFoundError

#: the model shipped inside the package (trained by ``scripts/train_embedded_model.py``)
EMBEDDED = "amoeba-tiny-sotu"
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / EMBEDDED
#: names of models that ``amoeba fetch NAME`` builds into the cache
FETCHABLE = ("smollm2-135m",)
#: what a fetched model is on the Hugging Face Hub (its model card's ``base_model``) and its licence
KNOWN_SOURCES = {"smollm2-135m": {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
                 EMBEDDED: {"hub_id": None, "license": "apache-2.0"}}
ENV_CACHE = "AMOEBA_CACHE"


def cache_dir() -> Path:
    """Where fetched models live: ``$AMOEBA_CACHE`` or ``~/.cache/amoeba-plugin`` (never created here)."""
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/amoeba-plugin").expanduser()


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``owner/name``; anything else with separators is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or (
        os.sep != "/" and os.sep in name)


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A directory to load from, or a hub id passed through unchanged."""
    name = str(name_or_path)
    if name == EMBEDDED:
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise ModelNotFoundError(f"the embedded model is missing from {EMBEDDED_DIR}",
                                     "reinstall amoeba-plugin, or rebuild it with scripts/train_embedded_model.py")
        return str(EMBEDDED_DIR)
    if name in FETCHABLE:
        path = cache_dir() / name
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name} has not been fetched yet (looked in {path})", f"amoeba fetch {name}")
        return str(path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json, so it is not a saved model",
                                     "pass the directory that save_pretrained wrote")
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not a model directory",
                                 "pass the directory holding config.json and the weights")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no model at {os.path.abspath(path)}",
                                 f"check the path, or use the embedded model '{EMBEDDED}'")
    return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """A DNS look-up of the hub host, so an offline machine fails at once instead of after
    huggingface_hub's ~50 s of retries (then only the local HF cache is used)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """huggingface_hub's offline switch, for this load only (some look-ups ignore local_files_only)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved, hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def _is_offline_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("connection", "offline", "resolve", "timed out", "timeout", "network",
                                   "max retries", "is not a local folder", "not a valid model identifier",
                                   "repository not found", "couldn't connect", "localentrynotfound"))


def _damaged_file(path: str) -> CorruptFileError | None:
    """After a failed load of a local directory: the unreadable config or weights file, if any."""
    if not os.path.isdir(path):
        return None
    from safetensors import safe_open

    fix = "the file is damaged or truncated: download or export the model again"
    for json_file in sorted(Path(path).glob("*.json")):
        try:
            json.loads(json_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return CorruptFileError(f"cannot read {json_file} (invalid JSON: {exc})", fix)
    for weights in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types
            return CorruptFileError(f"cannot read {weights} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})",
                                    fix)
    return None


def _did_you_mean(name) -> str:
    close = difflib.get_close_matches(str(name), [EMBEDDED, *FETCHABLE], n=1, cutoff=0.75)
    return f"did you mean '{close[0]}'? Otherwise " if close else ""


def load_model(name_or_path, dtype=None, device: str = "cpu"):
    """``(model, tokenizer)`` in eval mode; tokenizer is None when the directory has none.

    ``dtype`` defaults to float32 (the fp16 checkpoints load as fp32 for CPU maths)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .arch import register_with_transformers

    register_with_transformers()  # so `model_type: amoeba` exports load
    path = resolve_model_path(name_or_path)
    hub = not os.path.isdir(path)
    offline = {"local_files_only": True} if hub and not _hub_reachable() else {}
    try:
        with _hub_offline(bool(offline)):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **offline)
    except Exception as exc:  # translated below; never a deep traceback for the user
        corrupt = _damaged_file(path)
        if corrupt is not None:
            raise corrupt from None
        if hub:
            if offline or _is_offline_error(exc):
                raise ModelNotFoundError(
                    f"'{path}' is not a local directory, the Hugging Face hub cannot be reached and the "
                    "model is not in the local Hugging Face cache",
                    f"{_did_you_mean(name_or_path)}pass a local model directory, '{EMBEDDED}', or run "
                    "`amoeba fetch smollm2-135m` and use 'smollm2-135m'") from None
            raise ModelNotFoundError(f"cannot load '{path}' from the hub ({type(exc).__name__}: {exc})",
                                     "check the model id, or pass a local directory") from None
        raise ModelNotFoundError(f"cannot load the model in {path} ({type(exc).__name__}: {exc})",
                                 "check that it is a causal LM saved with save_pretrained") from None
    tokenizer = None
    try:
        with _hub_offline(bool(offline)):
            tokenizer = AutoTokenizer.from_pretrained(path, **offline)
    except Exception:  # a model without a tokenizer is still prunable (no calibration text)
        corrupt = _damaged_file(path)
        if corrupt is not None:
            raise corrupt from None
    model.amoeba_stored_dtype = _stored_dtype(path, model)
    model.amoeba_source_name = str(name_or_path)
    return model.to(device).eval(), tokenizer


def _stored_dtype(path: str, model) -> str:
    """The dtype the checkpoint is stored in (its ``config.json``), which exports keep by default:
    the model is loaded in float32 for CPU maths, but an fp16 source should not become an fp32 export."""
    import json

    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                data = json.load(f)
            stored = data.get("dtype") or data.get("torch_dtype")
            if isinstance(stored, str) and stored in ("float32", "float16", "bfloat16"):
                return stored
        except (OSError, ValueError):
            pass
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def stored_dtype(model) -> str:
    """The dtype ``model``'s checkpoint was stored in when :func:`load_model` loaded it, else the
    dtype of its parameters (a model built in memory)."""
    return getattr(model, "amoeba_stored_dtype", None) or str(next(model.parameters()).dtype).removeprefix("torch.")


def source_facts(model) -> dict:
    """What is known of ``model``'s origin for a model card: ``hub_id`` and ``license`` (or {})."""
    name = getattr(model, "amoeba_source_name", None)
    return dict(KNOWN_SOURCES.get(name, {}))


__all__ = ["EMBEDDED", "EMBEDDED_DIR", "FETCHABLE", "KNOWN_SOURCES", "cache_dir", "load_model", "resolve_model_path",
           "source_facts", "stored_dtype"]
