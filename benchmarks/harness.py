"""The machinery every benchmark shares: results files that resume (:class:`EntryCache`,
:func:`open_results`, :func:`load_results`, :func:`write_json_atomic`), a benchmark's ``main``
(:func:`run_benchmark`, :func:`restored_settings`), peak resident memory (:class:`PeakRSS` over
``/proc``), what to record beside the numbers (:func:`machine_info`, :func:`versions`), checks on a
shared model (:func:`state_checksum`, :func:`hook_count`, :func:`parameter_counts`), decode speed
(:func:`decode_tokens_per_s`, :func:`decode_speeds`, :func:`export_and_reload`) and argument parsing
(:func:`split_list`, :func:`parse_method_options`).

Benchmarks run as modules from the repository root (``python -m benchmarks.NAME``) and import
this one as ``benchmarks.harness``.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import torch

from amoeba_plugin.cli.options import parse_options
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plugins import plugin_records


# ---------------------------------------------------------------------- measuring
def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (empty where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so memory a run allocates shows up in RSS
    instead of reusing pages that an earlier run freed but the allocator kept."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory while the ``with`` block runs: a background thread samples VmRSS every
    ``interval`` seconds; where the kernel allows it the high-water mark is also reset at the start and
    read at the end, which catches spikes shorter than the interval."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = 0
        self.how = "proc"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _proc_status().get("VmRSS", 0))

    def __enter__(self) -> Self:
        self._hwm = False
        gc.collect()
        _trim_heap()
        status = _proc_status()
        if "VmRSS" not in status:  # not Linux: only the process-lifetime peak is known (see __exit__)
            self.how = "ru_maxrss (process lifetime)"
            return self
        self.start = self.peak = status["VmRSS"]
        self._hwm = _reset_peak()
        self.how = f"VmRSS sampled every {self.interval * 1000:g} ms" + (" + VmHWM" if self._hwm else "")
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            return
        self._stop.set()
        self._thread.join()
        status = _proc_status()
        self.peak = max(self.peak, status.get("VmRSS", 0), status.get("VmHWM", 0) if self._hwm else 0)

    def as_dict(self) -> dict:
        mib = 1024 * 1024
        return {"peak_rss_mib": round(self.peak / mib, 1), "rss_start_mib": round(self.start / mib, 1),
                "peak_rss_delta_mib": round((self.peak - self.start) / mib, 1) if self.start else None,
                "rss_measure": self.how}


def state_checksum(model) -> str:
    """A hash of every tensor of ``model.state_dict()`` (names, shapes, dtypes and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            if t.numel():
                h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def hook_count(model) -> int:
    """Forward (pre-)hooks registered on the model's modules: a method must remove the ones it adds."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def parameter_counts(model) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of a model; tied weights count once."""
    params = {id(p): p.numel() for p in model.parameters()}
    embedding = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None and getattr(module, "weight", None) is not None:
            embedding[id(module.weight)] = module.weight.numel()
    total = sum(params.values())
    return total, total - sum(v for k, v in embedding.items() if k in params)


# ---------------------------------------------------------------------- decode speed
def decode_tokens_per_s(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Greedy decoding speed (batch 1, KV cache): ``new_tokens`` tokens after ``prompt`` ``[1, T]``."""
    cuda = prompt.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(prompt.device)
        start = time.perf_counter()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        if cuda:  # kernels run asynchronously: wait for the last one before reading the clock
            torch.cuda.synchronize(prompt.device)
        elapsed = time.perf_counter() - start
    assert out.shape[1] - prompt.shape[1] == new_tokens
    return new_tokens / elapsed


def decode_speeds(models: Mapping[str, torch.nn.Module], prompt: torch.Tensor, new_tokens: int,
                  repeats: int) -> dict[str, dict]:
    """Decode tokens/s of every model, measured side by side: one short warm-up each, then ``repeats``
    interleaved rounds (so a machine that gets busier slows every model alike). Per model: the median
    (``tokens_per_s``) and every round (``all_runs``)."""
    for model in models.values():
        decode_tokens_per_s(model, prompt, min(8, new_tokens))
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            rates[name].append(decode_tokens_per_s(model, prompt, new_tokens))
    return {name: {"tokens_per_s": round(statistics.median(r), 2), "all_runs": [round(x, 2) for x in r]}
            for name, r in rates.items()}


def export_and_reload(request, directory: Path, exporter: str = "auto"):
    """Export ``request`` (an :class:`~amoeba_plugin.export.ExportRequest`) to ``directory`` with
    ``exporter`` and load it back with stock ``AutoModelForCausalLM.from_pretrained``, as a user
    would: (the reloaded model in eval mode, its architecture, the export's size in MiB)."""
    from transformers import AutoModelForCausalLM

    import amoeba_plugin  # noqa: F401  (registers the amoeba architecture for heterogeneous exports)
    from amoeba_plugin.export import export

    path = Path(export(exporter, request, directory))
    info = json.loads((path / "amoeba_export.json").read_text())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, info.get("architecture"), round(size / 2 ** 20, 2)


# ---------------------------------------------------------------------- arguments
def split_list(text: str) -> list[str]:
    """Comma-separated items; ``;`` separates instead when present (shape budgets contain commas)."""
    sep = ";" if ";" in text else ","
    return [item.strip() for item in text.split(sep) if item.strip()]


def _json(text: str, what: str, fix: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AmoebaError(f"{what} is not valid JSON ({exc})", fix) from None


def parse_method_options(items: list[str]) -> dict[str, dict]:
    """``NAME:key=value[,key=value]``, ``NAME:{json}``, or a JSON object ``{"NAME": {...}}``; repeatable."""
    out: dict[str, dict] = {}
    for item in items or []:
        item = item.strip()
        if item.startswith("{"):
            data = _json(item, f"--method-options {item!r}", 'write {"method": {"option": value}} or method:option=value')
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise AmoebaError(f"--method-options {item!r} must map method names to option objects",
                                  'write {"flap": {"metric": "fluctuation"}}')
            for name, options in data.items():
                out.setdefault(name, {}).update(options)
            continue
        name, sep, rest = item.partition(":")
        name, rest = name.strip(), rest.strip()
        if not sep or not name or not rest:
            raise AmoebaError(f"cannot read --method-options {item!r}",
                              "write METHOD:key=value[,key=value], METHOD:{json} or a JSON object")
        if rest.startswith("{"):
            options = _json(rest, f"--method-options for '{name}'", 'write METHOD:{"key": value}')
            if not isinstance(options, dict):
                raise AmoebaError(f"--method-options for '{name}' must be a JSON object", "write METHOD:{...}")
        else:  # the values as `amoeba prune --option` reads them; the method's options dataclass types them
            options = parse_options(pair.strip() for pair in rest.split(","))
        out.setdefault(name, {}).update(options)
    return out


# ---------------------------------------------------------------------- results files
def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (results files record when rows finished)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def jsonable(obj):
    """``obj`` with tensors, paths, sets and non-finite floats turned into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist()) if obj.numel() <= 64 else f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The machine a benchmark ran on (platform, CPU, memory, torch threads), recorded beside its numbers."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            info["cpu"] = match.group(1).strip()
        match = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
        if match:
            info["memory_gib"] = round(int(match.group(1)) / 1024 ** 2, 1)
    except OSError:
        pass
    return info


def versions() -> dict:
    """Versions of the host, its main dependencies and every external plugin, recorded beside the numbers."""
    out = {name: _version(name) for name in ("amoeba-plugin", "torch", "transformers", "tokenizers", "numpy",
                                            "matplotlib", "lm-eval")}
    out["plugins"] = {r.name: {"distribution": r.distribution, "version": r.version, "status": r.status}
                      for r in plugin_records() if r.origin != "builtin"}
    return out


def load_results(path: Path, fmt: str, writer: str) -> dict | None:
    """A results file written by ``writer`` (its ``format`` field is ``fmt``), or None if there is none."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AmoebaError(f"{path} is not valid JSON ({exc})", "delete it or pass --force to start over") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise AmoebaError(f"{path} was not written by {writer}", "pass another --out directory")
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename, so a results file is never half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1) + "\n")
    os.replace(tmp, path)


class EntryCache:
    """A JSON file of finished benchmark entries; ``get(key, fn)`` computes an entry once (so a
    long benchmark resumes). Entries made with other ``meta["settings"]`` are dropped; ``hide``
    names fields left out of the one-line report printed for each new entry."""

    def __init__(self, path: Path, meta: dict, hide: tuple[str, ...] = ()):
        self.path, self.hide = path, hide
        old = json.loads(path.read_text()) if path.exists() else {}
        self.data = old if old.get("settings") == meta["settings"] else {**meta, "entries": {}}
        self.data.update({k: v for k, v in meta.items() if k != "settings"})

    def get(self, key: str, fn):
        if key not in self.data["entries"]:
            began = time.perf_counter()
            value = fn()
            value["seconds"] = round(time.perf_counter() - began, 2)
            self.data["entries"][key] = value
            write_json_atomic(self.path, self.data)
            print(f"  {key}: {json.dumps({k: v for k, v in value.items() if k not in self.hide})[:300]}", flush=True)
        return self.data["entries"][key]


def open_results(args, hide: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> EntryCache:
    """``--out``/results.json as an :class:`EntryCache` whose settings are every argument but ``--out``,
    ``--threads``, ``--quiet`` and ``ignore`` (those do not change the numbers)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = {"out", "threads", "quiet", *ignore}
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    return EntryCache(out / "results.json", {"settings": settings, "machine": machine_info(),
                                             "torch_threads": torch.get_num_threads()}, hide=hide)


# ---------------------------------------------------------------------- running
@contextmanager
def restored_settings(quiet: bool):
    """Progress bars off when ``quiet``; torch's thread count and ``AMOEBA_PROGRESS`` restored after
    (benchmarks run in-process from tests, so they must leave both as they found them)."""
    saved, threads = os.environ.get("AMOEBA_PROGRESS"), torch.get_num_threads()
    if quiet:
        os.environ["AMOEBA_PROGRESS"] = "0"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if quiet:
            if saved is None:
                os.environ.pop("AMOEBA_PROGRESS", None)
            else:
                os.environ["AMOEBA_PROGRESS"] = saved


def run_benchmark(parser: argparse.ArgumentParser, run, argv: list[str] | None = None) -> int:
    """A benchmark's ``main``: parse ``argv``, then ``run(args)`` with ``--threads`` applied and progress
    bars off under ``--quiet``, both restored after (tests call benchmarks in-process)."""
    args = parser.parse_args(argv)
    with restored_settings(args.quiet):
        if args.threads:
            torch.set_num_threads(args.threads)
        return run(args)
