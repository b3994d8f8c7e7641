"""The lm-eval model ``amoeba``: lm-eval's ``HFLM`` around a model that amoeba-plugin loads.

Registered lazily in lm-eval's model registry (``amoeba_plugin.eval.lm_eval.register_lm_eval_model``,
called on ``import amoeba_plugin``, by ``amoeba-lm-eval`` and by the ``lm-eval`` evaluator), so::

    amoeba-lm-eval run --model amoeba --model_args pretrained=amoeba-tiny-sotu --tasks amoeba_sotu_ppl
    amoeba-lm-eval run --model amoeba --model_args base=amoeba-tiny-sotu,plan=out/plan.json --tasks ...
    amoeba-lm-eval run --model amoeba --model_args bundle=amoeba.bundle,shape=0.5 --tasks ...

``--model_args``: ``pretrained=`` | ``base=,plan=`` | ``bundle=`` (see
:func:`~amoeba_plugin.eval.model_args.load_model_args`), and ``dtype``, ``device``, ``tokenizer``,
``batch_size``, ``max_batch_size``, ``max_length`` plus HFLM's formatting options (``add_bos_token``,
``prefix_token_id``, ``truncation``, ``logits_cache``, ``softmax_dtype``, ``mixed_precision_dtype``).
Importing this module imports lm-eval's HFLM (and so transformers and accelerate).
"""
from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

from ..errors import AmoebaError
from .logs import quiet_lm_eval
from .model_args import load_model_args, resolve_device

#: HFLM keyword arguments that make sense for a model handed over already loaded
HFLM_OPTIONS = frozenset({"batch_size", "max_batch_size", "max_length", "truncation", "logits_cache",
                          "add_bos_token", "prefix_token_id", "softmax_dtype", "mixed_precision_dtype",
                          "think_end_token", "enable_thinking", "chat_template_args", "backend"})
#: arguments lm-eval's CLI may add that mean nothing for an in-memory model
_IGNORED = frozenset({"trust_remote_code", "revision", "parallelize", "use_fast_tokenizer"})


class AmoebaLM(HFLM):
    """``HFLM`` over a model loaded by amoeba-plugin (``pretrained=``, ``base=,plan=`` or ``bundle=``).

    ``pretrained`` may also be a loaded ``PreTrainedModel`` (then ``tokenizer`` must be the tokenizer
    object); the in-process ``lm-eval`` evaluator uses it that way.
    """

    def __init__(self, pretrained: Any = None, base: str | None = None, plan: str | None = None,
                 bundle: str | None = None, tokenizer: Any = None, dtype: Any = None, device: str | None = None,
                 batch_size: int | str | None = 1, **kwargs: Any) -> None:
        hflm = {k: kwargs.pop(k) for k in list(kwargs) if k in HFLM_OPTIONS}
        for key in _IGNORED:
            kwargs.pop(key, None)
        if pretrained is not None and not isinstance(pretrained, str) and hasattr(pretrained, "config"):
            if tokenizer is None or isinstance(tokenizer, str):
                raise AmoebaError("a loaded model needs its loaded tokenizer", "pass tokenizer=<the tokenizer object>")
            extra = [k for k, v in (("base", base), ("plan", plan), ("bundle", bundle), ("dtype", dtype)) if v is not None]
            if extra or kwargs:
                raise AmoebaError(f"a loaded model takes no loading options (got {', '.join([*extra, *kwargs])})",
                                  "pass either the loaded model or model_args that say what to load")
            model, tok = pretrained, tokenizer
            if device:
                model = model.to(resolve_device(device))
            self.amoeba_info: dict[str, Any] = {"amoeba_load": "in memory"}
        else:
            model, tok, self.amoeba_info = load_model_args(pretrained=pretrained, base=base, plan=plan, bundle=bundle,
                                                           dtype=dtype, device=device, tokenizer=tokenizer, **kwargs)
        with quiet_lm_eval(logger_name="lm_eval.models.huggingface"):  # HFLM: loading options skipped, as expected
            super().__init__(pretrained=model, tokenizer=tok, batch_size=1 if batch_size is None else batch_size,
                             **hflm)

    def get_model_info(self) -> dict:
        """What the results record about the model, without asking the Hugging Face hub for a sha."""
        model = self._model
        return {"model_num_parameters": sum(p.numel() for p in model.parameters()),
                "model_dtype": str(getattr(model, "dtype", "")), "model_revision": None, "model_sha": "",
                "model_type": getattr(model.config, "model_type", ""), **self.amoeba_info}


__all__ = ["HFLM_OPTIONS", "AmoebaLM"]
