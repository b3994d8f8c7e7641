"""Exporters for inference engines: ``decilm`` (a directory vLLM serves) and ``gguf`` (llama.cpp).

Both start from the sliced model the ``auto`` exporter would write (stock when the plan allows it,
else ``amoeba``) and re-express it in the engine's own format; see :mod:`.decilm` and
:mod:`.gguf_file` for the rules each engine imposes and how they are met exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import Exporter, ExportRequest
from .card import model_card
from .patch import save_patch
from .decilm import CONFIG_MODULE, config_module_source, decilm_layout, layer_shapes, refusal
from .writers import EXPORT_INFO, cast_state, export_dtype, export_info, sliced_for, stock_obstacle

GGUF_NAME = "model.gguf"


def _sliced(request: ExportRequest):
    target = "stock" if stock_obstacle(request.model, request.anatomy, request.plan, request.patch) is None \
        else "amoeba"
    return sliced_for(request, target)


def _shape_refusal(request: ExportRequest, what: str) -> str | None:
    """Why the plan's slice has no form in ``what`` (checked on shapes, without slicing weights)."""
    from .writers import _layer_specs, sliced_shapes

    state = sliced_shapes(request.model, request.anatomy, request.plan, request.patch)
    specs = _layer_specs(request.model, request.anatomy, request.plan, state)
    model = request.model
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    from .decilm import LayerShape

    shapes = [LayerShape(s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"], s["intermediate_size"],
                         head_channels=s["head_channels"], qk_norm=s["qk_norm"], sliding_window=s["sliding_window"])
              for s in specs]
    return refusal(shapes, head_dim, what)


def _write_companions(request: ExportRequest, sliced, directory: Path, name: str, serve: list[str],
                      extra_info: dict) -> None:
    if request.tokenizer is not None:
        request.tokenizer.save_pretrained(directory)
    request.plan.save(directory / "plan.json")
    save_patch(request.patch, directory)
    card = model_card(request, name, sliced).rstrip("\n")
    (directory / "README.md").write_text(card + "\n\n" + "\n".join(serve) + "\n", encoding="utf-8")
    info = export_info(request, name, sliced)
    info.update(extra_info)
    (directory / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


class DeciLMExporter(Exporter):
    name = "decilm"
    description = ("a DeciLM (nemotron-nas) directory that vLLM serves (trust_remote_code); pruned query heads "
                   "and head channels zero-padded")

    def check(self, request: ExportRequest) -> str | None:
        return _shape_refusal(request, "DeciLM")

    def write(self, request: ExportRequest, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        sliced = _sliced(request)
        layout = decilm_layout(sliced)
        dtype = export_dtype(request)
        layout.config["dtype"] = str(dtype).removeprefix("torch.")
        save_file(cast_state(layout.state, dtype), str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(layout.config, indent=2) + "\n", encoding="utf-8")
        (directory / CONFIG_MODULE).write_text(config_module_source(), encoding="utf-8")
        if getattr(sliced, "generation_config", None) is not None:
            sliced.generation_config.save_pretrained(directory)
        kept = sum(p.numel() for p in sliced.parameters())
        notes = "".join(f"- {note}\n" for note in layout.notes) + ("\n" if layout.notes else "")
        serve = (Path(__file__).with_name("templates") / "decilm_serving.md").read_text(encoding="utf-8").format(
            padding=layout.padding, kept=kept, share=layout.padding / max(kept, 1), config_module=CONFIG_MODULE,
            notes=notes).splitlines()
        _write_companions(request, sliced, directory, self.name, serve,
                          {"engine_format": "decilm", "zero_parameters_added": layout.padding,
                           "parameters_without_padding": kept, "notes": layout.notes})


class GGUFExporter(Exporter):
    name = "gguf"
    description = "a GGUF file for llama.cpp (llama or deci architecture, exact per-layer shapes; f16 from a 16-bit source, f32 from a float32 one)"

    def check(self, request: ExportRequest) -> str | None:
        if request.tokenizer is None:
            return "a GGUF file needs the tokenizer, and none was given"
        return _shape_refusal(request, "GGUF")

    def write(self, request: ExportRequest, directory: Path) -> None:
        from .gguf_file import write_gguf

        directory = Path(directory)
        sliced = _sliced(request)
        dtype = "f32" if export_dtype(request) == torch.float32 else "f16"
        report = write_gguf(sliced, request.tokenizer, directory / GGUF_NAME, dtype=dtype,
                            name=str((request.info or {}).get("source_model") or ""))
        serve = ["## Running with llama.cpp", "",
                 f"`{GGUF_NAME}` ({report['dtype']}, llama.cpp architecture `{report['architecture']}`) runs in llama.cpp "
                 "and its bindings:", "", "```python", "from llama_cpp import Llama", "",
                 f"llm = Llama(\"path/to/this/directory/{GGUF_NAME}\")",
                 "print(llm(\"The state of the union is\", max_tokens=32))", "```", "",
                 *[f"- {note}" for note in report["stand_ins"]], ""]
        _write_companions(request, sliced, directory, self.name, serve, {"engine_format": "gguf", **report})


__all__ = ["DeciLMExporter", "GGUFExporter", "GGUF_NAME", "layer_shapes"]
