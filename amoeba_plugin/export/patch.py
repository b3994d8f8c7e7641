"""The patch beside a plan: the tensors a method changed, so a plan reproduces its export.

``plan.json`` says which units were kept, not what a method did to the kept weights (FLAP's
compensation biases, the Search backend's reformed projections, Sheared's and AmoebaLLM's trained
weights). Exports therefore write those tensors as ``amoeba_patch/patch.safetensors`` (source naming,
their own dtype; in a folder, since vLLM loads every top-level ``*.safetensors`` of a directory)
next to ``plan.json``, and everything that applies a plan from disk (``amoeba export
--plan``, ``amoeba eval --plan``) reads it back, or refuses a plan whose method changed weights when
the patch is missing, instead of silently building a different model.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import AmoebaError, CorruptFileError
from ..plan import Plan

#: in a folder of its own: engines (vLLM) load every top-level ``*.safetensors`` of a model directory
PATCH_FILE = "amoeba_patch/patch.safetensors"
#: method capabilities that mean the plan alone does not reproduce the method's model
WEIGHT_CHANGES = frozenset({"changes_weights", "trains"})


def save_patch(patch: dict[str, torch.Tensor] | None, directory: str | os.PathLike) -> Path | None:
    """Write ``patch`` as ``directory/amoeba_patch/patch.safetensors`` (nothing when it is empty)."""
    if not patch:
        return None
    from safetensors.torch import save_file

    path = Path(directory) / PATCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in patch.items()}, str(path),
              metadata={"format": "pt", "written_by": "amoeba-plugin"})
    return path


def _plan_directory(plan_path: str | os.PathLike) -> Path:
    path = Path(plan_path)
    return path if path.is_dir() else path.parent


def changes_weights(plan: Plan) -> bool | None:
    """Whether the method that made ``plan`` changes weights (None: the method is not installed)."""
    from ..plugins import registry

    name = (plan.provenance or {}).get("method")
    method = registry("methods").get(name) if isinstance(name, str) else None
    if method is None:
        return None
    return bool(WEIGHT_CHANGES & set(getattr(method, "capabilities", ())))


def load_plan(plan_path: str | os.PathLike, ignore_patch: bool = False) -> tuple[Plan, dict | None]:
    """``(plan, patch)`` from a plan.json or an export directory; the patch is None when there is none.

    Refuses a plan whose method changed weights when its patch is missing (unless ``ignore_patch``)."""
    plan = Plan.load(plan_path)
    if ignore_patch:
        return plan, None
    file = _plan_directory(plan_path) / PATCH_FILE
    if file.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return plan, load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptFileError(f"{file} cannot be read ({exc})",
                                   "re-export the model, or pass --ignore-patch to apply the plan alone") from None
    if changes_weights(plan):
        method = plan.provenance.get("method")
        raise AmoebaError(f"{plan_path} holds the plan only, but '{method}' also changed weights (compensation, "
                          f"reformed or trained tensors) that are not in it, so applying it would give another model",
                          f"pass the export directory of that run (it holds {PATCH_FILE}), or --ignore-patch to "
                          "apply the plan to the unchanged weights")
    return plan, None


__all__ = ["PATCH_FILE", "WEIGHT_CHANGES", "changes_weights", "load_plan", "save_patch"]
