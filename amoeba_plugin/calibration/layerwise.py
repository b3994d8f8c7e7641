"""The layer-by-layer pass that calibration runs on: calibrate one decoder layer, then propagate.

The model runs up to its first decoder layer once (:func:`decoder_inputs`: the hidden states of
every window, kept per batch). Then, one decoder layer at a time, ``on_layer(step)`` sees the layer
and its inputs and may collect statistics or refit weights, running the layer as often as it needs
(:meth:`LayerStep.run`, under any soft plan, with pre-hooks on its linears); afterwards the layer's
outputs become the next layer's inputs (:meth:`LayerStep.propagate`). Memory therefore stays near the
model plus two copies of the hidden states plus one layer's activations, never the whole activation
history (the SparseGPT / Wanda / FLAP scheme; llm-compressor's sequential pipeline).

Without a ``subnet`` the outputs come from the dense layer. With one (a :class:`~amoeba_plugin.plan.Plan`)
they come from the subnet's layer, applied soft with ``patch`` as ``on_layer`` left it, so each layer
calibrates on what its pruned (and refitted) predecessors really give it; a layer the subnet drops
passes its input through and ``on_layer`` is not called for it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

from ..anatomy import Anatomy, LayerAnatomy
from ..errors import AmoebaError

#: ``(module name, fn(input))``: a forward pre-hook on one of the layer's linears, seeing its input
Hook = tuple[str, Callable[[torch.Tensor], None]]


class _Stop(Exception):
    """Raised by the first decoder layer's pre-hook: the embeddings are all we need from the model."""


def check_windows(windows) -> None:
    """Refuse anything but a LongTensor ``[n, seq_len]`` of token ids."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise AmoebaError("calibration windows must be a LongTensor [n, seq_len]",
                          "pass amoeba_plugin.data.calibration_windows(...) or get_calibration_dataset(...)")


def decoder_inputs(model, layers, windows: torch.Tensor, batch_size: int, device):
    """Hidden states entering the first decoder layer, and the keyword arguments the model passes
    every layer (position embeddings, mask), one entry per batch: the start of a layer-by-layer pass
    (``layers`` is the model's decoder ``ModuleList``)."""
    hidden, kwargs_per_batch = [], []

    def catch(module, args, kwargs):
        hidden.append((args[0] if args else kwargs.pop("hidden_states")).detach())
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kwargs["use_cache"] = False
        # the KV cache argument, under its name in this transformers ("cache" from 5.24 on)
        kwargs["cache" if "cache" in kwargs else "past_key_values"] = None
        kwargs_per_batch.append(kwargs)
        raise _Stop

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            try:
                model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return hidden, kwargs_per_batch


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class LayerStep:
    """One decoder layer of a :func:`layer_pass`, as ``on_layer`` sees it.

    ``layer`` (its :class:`~amoeba_plugin.anatomy.LayerAnatomy`), ``module`` (the decoder layer),
    ``inputs`` (the hidden states entering it, one tensor per batch), ``kwargs`` (what the model
    passes every layer, per batch) and, once propagated, ``outputs``.
    """

    def __init__(self, model, anatomy: Anatomy, layer: LayerAnatomy, module, inputs: list[torch.Tensor],
                 kwargs: list[dict], subnet=None, patch: dict | None = None):
        self.model, self.anatomy, self.layer, self.module = model, anatomy, layer, module
        self.inputs, self.kwargs = inputs, kwargs
        self.subnet, self.patch = subnet, patch
        self.outputs: list[torch.Tensor] | None = None

    def run(self, plan=None, hooks: Iterable[Hook] = ()) -> list[torch.Tensor]:
        """The layer's outputs on every batch: the dense layer (``plan=None``), or the layer as
        ``plan`` has it (soft, with the pass's ``patch``). ``hooks`` observe the inputs of the
        layer's linears meanwhile (they run before the plan's own masks)."""
        return self._forward(plan, hooks, [None] * len(self.inputs))

    def propagate(self, hooks: Iterable[Hook] = (),
                  observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Run the forward whose outputs feed the next layer (the dense layer, or the subnet's with
        the patch) and return them. ``hooks`` and ``observe(input, output)`` (called per batch) watch
        it, so statistics of the dense model cost no extra forward. The outputs replace ``inputs``
        batch by batch (one copy of the hidden states in memory). Runs once: the pass calls it after
        ``on_layer`` unless ``on_layer`` did."""
        if self.outputs is not None:
            raise AmoebaError(f"layer {self.layer.index} was already propagated", "call propagate() once per layer")
        self.outputs = self._forward(self.subnet, hooks, self.inputs, observe)
        return self.outputs

    def _forward(self, plan, hooks: Iterable[Hook], into: list, observe=None) -> list[torch.Tensor]:
        handles = [self.model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, fn=fn: fn(args[0])) for name, fn in hooks]
        try:
            if plan is None:
                soft = contextlib.nullcontext()
            else:
                from ..surgery import apply_soft

                soft = apply_soft(self.model, self.anatomy, plan, self.patch)
            with soft:
                for b in range(len(self.inputs)):
                    h = self.inputs[b]
                    out = _output(self.module(h, **self.kwargs[b]))
                    if observe is not None:
                        observe(h, out)
                    into[b] = out
        finally:
            for handle in handles:
                handle.remove()
        return into


@torch.no_grad()
def layer_pass(model, anatomy: Anatomy, windows: torch.Tensor, on_layer: Callable[[LayerStep], None], *,
               subnet=None, patch: dict | None = None, batch_size: int = 8, desc: str = "layer pass") -> None:
    """Run ``windows`` (LongTensor ``[n, seq_len]``) through the model one decoder layer at a time,
    calling ``on_layer(step)`` (a :class:`LayerStep`) for each layer before its outputs are
    propagated to the next one (see the module docstring). ``subnet``: a Plan to propagate through
    (its hidden channels also mask the embeddings); ``patch``: tensors named like the model's
    parameters applied with it, which ``on_layer`` may extend as it goes (e.g. refitted weights).
    The model is in eval mode meanwhile. Deterministic: same windows, same numbers."""
    from ..progress import progress

    check_windows(windows)
    if subnet is not None:
        subnet.validate(anatomy)
    decoder = model.get_submodule(anatomy.layers_path)
    device = next(model.parameters()).device
    kept = None if subnet is None else {lp.index for lp in subnet.layers}
    was_training = model.training
    model.eval()
    try:
        if subnet is None:
            hidden, kwargs_per_batch = decoder_inputs(model, decoder, windows, batch_size, device)
        else:
            from ..surgery import apply_soft

            with apply_soft(model, anatomy, subnet):  # the subnet's embeddings (hidden channels masked)
                hidden, kwargs_per_batch = decoder_inputs(model, decoder, windows, batch_size, device)
        for layer in progress(anatomy.layers, desc, total=anatomy.num_layers):
            if kept is not None and layer.index not in kept:
                continue  # a dropped layer passes its input through
            step = LayerStep(model, anatomy, layer, decoder[layer.index], hidden, kwargs_per_batch, subnet, patch)
            on_layer(step)
            hidden = step.outputs if step.outputs is not None else step.propagate()
    finally:
        model.train(was_training)


__all__ = ["LayerStep", "check_windows", "decoder_inputs", "layer_pass"]
