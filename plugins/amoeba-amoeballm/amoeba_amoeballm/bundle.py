"""The one-for-all bundle: one directory from which any shape is extracted in seconds.

::

    BUNDLE/
      amoeba_bundle.json      format, version, base reference + fingerprint, width list, SMoL config,
                              training summary, per-shape scores
      selection.json          the DP depth table (a mask per depth) and the full-depth width plans
      biases.safetensors      compensation biases, keys "<width>/<module>.bias"
      adapter/                the SMoL experts (peft adapters expert_0..) and router (absent before training)
      checkpoint/             the fine-tuning checkpoint (resume)
      latency/<machine>.json  measured decode latency per shape, one table per machine

The base model is referenced, not copied: a name :func:`amoeba_plugin.models.load_model` resolves or
a path. Its fingerprint is checked on load, so a bundle is never applied to other weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from amoeba_plugin import __version__ as host_version
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import atomic_directory, atomic_update, recover_destination, recover_updates

from .shapes import SelectionTable

FORMAT = "amoeballm-bundle"
VERSION = 1
MANIFEST = "amoeba_bundle.json"
SELECTION = "selection.json"
BIASES = "biases.safetensors"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
LATENCY = "latency"


def is_bundle(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass
class Bundle:
    """A bundle on disk: the manifest and the selection table (the adapter loads on demand)."""

    path: Path
    manifest: dict
    table: SelectionTable

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path) -> Bundle:
        from amoeba_plugin.statefiles import read_json, read_tensors

        path = Path(path).expanduser()
        if path.parent.is_dir():  # finish or undo what a killed select --overwrite or train left
            recover_destination(path)
        if path.is_dir():
            recover_updates(path)
        if not is_bundle(path):
            raise AmoebaError(f"{path} is not an AmoebaLLM bundle (no {MANIFEST})",
                              "pass a directory written by `amoeba amoeballm select` (then `train`)")
        fix = f"recreate the bundle with `amoeba amoeballm select MODEL --output {path} --overwrite`"
        manifest = read_json(path / MANIFEST, "bundle manifest", fix)
        selection = read_json(path / SELECTION, "bundle selection table", fix)
        if manifest.get("format") != FORMAT:
            raise AmoebaError(f"{path / MANIFEST} is not an AmoebaLLM bundle manifest", "pass an AmoebaLLM bundle")
        version = manifest.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise AmoebaError(f"{path / MANIFEST} has version {version!r}, not a whole number", fix)
        if version > VERSION:
            raise AmoebaError(f"bundle format version {manifest['version']} is newer than this plugin reads ({VERSION})",
                              "upgrade amoeba-amoeballm")
        if not isinstance(manifest.get("base"), dict) or not isinstance(manifest["base"].get("name_or_path"), str):
            raise AmoebaError(f"{path / MANIFEST} does not name its base model (base.name_or_path)", fix)
        tensors = read_tensors(path / BIASES, "bundle bias table", fix) if (path / BIASES).exists() else {}
        try:
            table = SelectionTable.from_dict(selection, tensors)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise AmoebaError(f"the bundle selection table {path / SELECTION} is damaged "
                              f"({type(exc).__name__}: {exc})", fix) from None
        return cls(path, manifest, table)

    @property
    def base(self) -> str:
        return self.manifest["base"]["name_or_path"]

    @property
    def trained(self) -> bool:
        return (self.path / ADAPTER).is_dir()

    @property
    def shape_scores(self) -> dict[str, float]:
        return dict(self.manifest.get("shape_scores") or {})

    @property
    def seen_texts(self) -> list[dict]:
        """Every text the bundle saw: stage 1's calibration and the fine-tuning text
        (``[{"source", "role", "by"?}]``, as :func:`amoeba_plugin.data.seen_texts` reads them)."""
        from amoeba_plugin.data import record_seen_text, seen_texts

        record = {"data": dict(self.manifest.get("data") or {})}
        calibration = (self.manifest.get("selection") or {}).get("calibration")
        if isinstance(calibration, str):
            record_seen_text(record, [calibration], "calibration", by="amoeballm select")
        return seen_texts(record)

    def load_base(self, dtype=None, device=None):
        """The base model and tokenizer, checked against the bundle's fingerprint."""
        from amoeba_plugin.anatomy import anatomy_of
        from amoeba_plugin.models import load_model

        from amoeba_plugin.errors import ModelNotFoundError

        kwargs = {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None}
        try:
            model, tokenizer = load_model(self.base, **kwargs)
        except ModelNotFoundError as exc:  # name the bundle: its manifest is what points at the lost model
            raise ModelNotFoundError(f"the base model of the bundle {self.path} cannot be loaded: {exc.problem}",
                                     f"put the base model back at '{self.base}', or set base.name_or_path in "
                                     f"{self.path / MANIFEST} to where it is now") from None
        anatomy = anatomy_of(model)
        want = self.manifest["base"].get("fingerprint", "")
        if want and anatomy.fingerprint.split("-")[0] != want.split("-")[0]:
            raise AmoebaError(f"the base model '{self.base}' does not have the shape this bundle was made for",
                              "point the bundle at its original base model (amoeba_bundle.json: base.name_or_path)")
        if want and dtype is None and anatomy.fingerprint != want:
            raise AmoebaError(f"the weights of '{self.base}' differ from those this bundle was made for "
                              f"(fingerprint {anatomy.fingerprint}, expected {want})",
                              "point the bundle at its original base model (amoeba_bundle.json: base.name_or_path)")
        return model, tokenizer, anatomy

    def load_adapter(self, model, anatomy, is_trainable: bool = False):
        """The SMoL adapter on ``model`` (modified in place by peft), or None before training."""
        from .smol import SMoLAdapter

        if not self.trained:
            return None
        return SMoLAdapter.load(model, anatomy, self.path / ADAPTER, is_trainable=is_trainable)

    # ------------------------------------------------------------------ writing
    def update_manifest(self, adapter=None, **changes) -> None:
        """Merge ``changes`` into the manifest and, with ``adapter``, replace the adapter: one atomic
        commit (``atomic_update``), so a kill leaves both old or both new, never a trained adapter
        under a manifest without its scores."""
        manifest = {**self.manifest, **changes}
        with atomic_update(self.path) as stage:
            if adapter is not None:
                adapter.save(stage / ADAPTER)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        self.manifest = manifest

    def save_adapter(self, adapter) -> None:
        """Write the adapter next to the selection, replacing an older one atomically."""
        with atomic_update(self.path) as stage:
            adapter.save(stage / ADAPTER)


def write_bundle(destination, base: str, anatomy, table: SelectionTable, info: dict, overwrite: bool = False) -> Bundle:
    """Write stage 1's bundle atomically (nothing appears at ``destination`` if this fails)."""
    from safetensors.torch import save_file

    manifest = {"format": FORMAT, "version": VERSION, "created_by": f"amoeba-plugin {host_version}",
                "base": {"name_or_path": base, "fingerprint": anatomy.fingerprint, "model_type": anatomy.model_type,
                         "num_layers": anatomy.num_layers, "hidden_size": anatomy.hidden_size},
                "widths": table.widths, "depths": table.depth.depths(), "allocation": table.allocation,
                "selection": info, "smol": None, "training": None, "shape_scores": None}
    with atomic_directory(destination, overwrite) as tmp:
        (tmp / SELECTION).write_text(json.dumps(table.to_dict()) + "\n")
        save_file(table.bias_tensors(), str(tmp / BIASES))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return Bundle.load(destination)


__all__ = ["ADAPTER", "CHECKPOINT", "LATENCY", "MANIFEST", "Bundle", "is_bundle", "write_bundle"]
