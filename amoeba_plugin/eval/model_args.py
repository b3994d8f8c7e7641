"""The ``--model_args`` of the lm-eval model ``amoeba``: what to load (``pretrained=``, ``base=,plan=``
or ``bundle=``) and how (``dtype``, ``device``, ``tokenizer``). Imports neither lm-eval nor the model
class, so :mod:`~amoeba_plugin.eval.lm_eval` and :mod:`~amoeba_plugin.eval.lm_eval_model` both use it
without importing each other.
"""
from __future__ import annotations

import logging
from typing import Any

from ..errors import AmoebaError


def _dtype(value):
    import torch

    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise AmoebaError(f"dtype '{value}' is not a torch dtype", "use float32, bfloat16 or float16")
    return dtype


def resolve_device(device) -> str:
    """``device`` as given, except that CUDA falls back to the CPU when there is none (lm-eval's CLI
    asks for ``cuda:0`` by default, and its ``hf`` model falls back the same way)."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("device %s requested but CUDA is not available: using the CPU", device)
        return "cpu"
    return device


def load_model_args(pretrained=None, base=None, plan=None, bundle=None, dtype=None, device=None,
                    tokenizer=None, **options) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, info)`` for the lm-eval model ``amoeba``. Exactly one of:

    * ``pretrained=NAME_OR_PATH``: an export directory, a saved model, a hub id, or ``amoeba-tiny-sotu``
      (anything :func:`amoeba_plugin.models.load_model` resolves);
    * ``base=NAME_OR_PATH,plan=PLAN``: load ``base``, apply the plan (``plan.json`` or an export
      directory) by slicing;
    * ``bundle=SPEC`` (plus plugin options such as ``shape=...``): asked of the plugins through the
      ``amoeba_load_model`` hook, e.g. an AmoebaLLM one-for-all bundle.

    ``options`` other than those go to the plugin (``bundle``) or are refused. ``tokenizer`` overrides
    the model's own tokenizer (a name or path).
    """

    from ..models import load_model

    chosen = [k for k, v in (("pretrained", pretrained), ("base", base), ("bundle", bundle)) if v is not None]
    usage = "pass one of pretrained=NAME_OR_PATH, base=NAME,plan=PLAN.json or bundle=PATH"
    if len(chosen) != 1:
        raise AmoebaError(f"the amoeba lm-eval model got {' and '.join(chosen) or 'no model'}", usage)
    if plan is not None and base is None:
        raise AmoebaError("plan= needs base= (the model the plan was made for)", "pass base=NAME,plan=PLAN.json")
    if options and bundle is None:
        raise AmoebaError(f"the amoeba lm-eval model does not know model_args {', '.join(sorted(options))}",
                          f"{usage}; other accepted keys: dtype, device, tokenizer, batch_size, max_length "
                          "and lm-eval's HFLM options")
    device = resolve_device(device)
    dtype = _dtype(dtype)
    info: dict[str, Any] = {}
    if pretrained is not None:
        model, tok = load_model(str(pretrained), dtype=dtype, device=device)
        info = {"amoeba_load": "pretrained", "amoeba_source": str(pretrained)}
    elif base is not None:
        if plan is None:
            raise AmoebaError("base= needs plan= (or use pretrained= for a model as it is)",
                              "pass base=NAME,plan=PLAN.json")
        from ..anatomy import anatomy_of
        from ..plan import Plan
        from ..surgery import slice_model

        the_plan = Plan.load(str(plan))
        model, tok = load_model(str(base), dtype=dtype, device=device)
        anatomy = anatomy_of(model)
        the_plan.validate(anatomy)
        if the_plan.output_bias:
            from ..errors import PlanError

            raise PlanError("this plan adds compensation biases, which live in its export, not in the plan",
                            "evaluate the export instead: pretrained=EXPORT_DIR")
        model = slice_model(model, anatomy, the_plan).eval()
        info = {"amoeba_load": "base+plan", "amoeba_source": str(base), "amoeba_plan": str(plan),
                "amoeba_parameters_ratio": the_plan.summary(anatomy).get("parameters_ratio")}
    else:
        from ..plugins import hook

        answer = hook().amoeba_load_model(spec=str(bundle), options={**options, "dtype": dtype, "device": device})
        if answer is None:
            raise AmoebaError(f"no plugin can load bundle '{bundle}'",
                              "install the plugin for this kind of bundle (for AmoebaLLM one-for-all bundles, the "
                              "AmoebaLLM backend) and check `amoeba plugins`; it must implement amoeba_load_model")
        try:
            model, tok = answer
        except (TypeError, ValueError):
            raise AmoebaError(f"the plugin answering amoeba_load_model for '{bundle}' returned "
                              f"{type(answer).__name__}, not (model, tokenizer)", "fix the plugin") from None
        model = model.to(device).eval()
        info = {"amoeba_load": "bundle", "amoeba_source": str(bundle),
                **{f"amoeba_{k}": v for k, v in options.items() if isinstance(v, (str, int, float, bool))}}
    if tokenizer is not None:
        from transformers import AutoTokenizer

        from ..models import resolve_model_path

        tok = AutoTokenizer.from_pretrained(resolve_model_path(str(tokenizer)))
    if tok is None:
        raise AmoebaError(f"{info['amoeba_source']} has no tokenizer", "pass tokenizer=NAME_OR_PATH in model_args")
    return model, tok, info


__all__ = ["load_model_args", "resolve_device"]
