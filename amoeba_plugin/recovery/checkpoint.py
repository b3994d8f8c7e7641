"""A recovery run directory: its settings, and checkpoints that survive ``kill -9``.

``run_dir/recovery.json`` holds the settings (a resume must match them, except ``save_every`` and
``log_every``). Each checkpoint is a directory ``checkpoint-<step>`` holding the trainable tensors
(every weight, or only the LoRA adapters), the optimizer, the LR schedule and the RNG states
(``optimizer.pt``), and the data position, the mixture, the reference losses and the log
(``state.json``). It is written into a temporary sibling and renamed into place in one
``os.replace``, so a kill at any moment leaves the previous checkpoint or the new one, complete;
older checkpoints are deleted only after the rename.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import AmoebaError

SETTINGS = "recovery.json"
PREFIX = "checkpoint-"
FORMAT = "amoeba-recovery"


def model_signature(model) -> dict:
    """What identifies the student's shape (not its weights): class, parameter names and shapes."""
    import hashlib

    h = hashlib.sha1()
    count = 0
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        count += p.numel()
    return {"class": type(model).__name__, "parameters": count, "shapes": h.hexdigest()[:16]}


class RecoveryRun:
    """The files of one recovery run in ``path``."""

    def __init__(self, path):
        self.path = Path(path).expanduser().resolve()

    def settings(self) -> dict | None:
        p = self.path / SETTINGS
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            raise AmoebaError(f"{p} is not valid JSON", "delete the run directory to start over") from None

    def latest(self) -> Path | None:
        """The newest complete checkpoint directory, or None."""
        if not self.path.is_dir():
            return None
        found = sorted(p for p in self.path.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                       and p.name[len(PREFIX):].isdigit() and (p / "state.json").is_file())
        return found[-1] if found else None

    def prepare(self, config, signature: dict) -> bool:
        """Whether this run resumes. A directory of another run (other settings, another student) is
        refused with one line; a new run writes its settings."""
        if self.path.exists() and not self.path.is_dir():
            raise AmoebaError(f"run_dir {self.path} is a file", "pass a directory for the recovery run")
        old = self.settings()
        if old is not None and self.latest() is None:  # a run that never reached its first checkpoint
            old = None
            (self.path / SETTINGS).unlink()
        if old is None:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise AmoebaError(f"run_dir {self.path} is not empty and holds no recovery run",
                                  "pass a new or empty directory as run_dir")
            self.path.mkdir(parents=True, exist_ok=True)
            self._write(self.path / SETTINGS, json.dumps({"format": FORMAT, "config": config.to_dict(),
                                                          "student": signature}, indent=1))
            return False
        from .config import RecoveryConfig

        try:
            previous = RecoveryConfig.from_dict(old.get("config") or {})
        except AmoebaError:
            previous = None
        changed = config.differences(previous) if previous is not None else ["config"]
        if old.get("student") != signature:
            changed.append("student")
        if changed:
            raise AmoebaError(f"run_dir {self.path} holds a recovery run with other settings ({', '.join(changed)})",
                              "resume with the same settings and student, or pass a new run_dir")
        return self.latest() is not None

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def save(self, step: int, tensors: dict[str, torch.Tensor], optimizer, scheduler, state: dict) -> Path:
        """Write ``checkpoint-<step>`` atomically; then drop the older ones."""
        from safetensors.torch import save_file

        final = self.path / f"{PREFIX}{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=self.path))
        try:
            save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                       tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            if final.exists():  # the same step saved again (a finished run resumed): keep the new one
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.path.iterdir():
            if old.is_dir() and old != final and (old.name.startswith(PREFIX) or old.name.startswith(f".{PREFIX}")):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, checkpoint: Path) -> tuple[dict, dict, dict]:
        """``(tensors, optimizer.pt contents, state)`` of a checkpoint."""
        from safetensors.torch import load_file

        tensors = load_file(str(checkpoint / "trainable.safetensors"))
        extra = torch.load(checkpoint / "optimizer.pt", weights_only=True)  # tensors, numbers and tuples only
        state = json.loads((checkpoint / "state.json").read_text())
        return tensors, extra, state


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["FORMAT", "PREFIX", "RecoveryRun", "SETTINGS", "model_signature", "rng_state", "set_rng_state"]
