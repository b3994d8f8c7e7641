"""SMoL: the subnet-shape-aware mixture of LoRA experts of AmoebaLLM, built on peft.

Every targeted decoder linear carries ``num_experts`` peft LoRA adapters (``expert_0`` ...). ONE
global :class:`ShapeRouter` maps the subnet's *shape encoding* (not the tokens) to a sparse gate,
computed once per :meth:`SMoLAdapter.set_shape` and broadcast to every layer. The official rule
mixes the experts' *weights* (``A_mix = sum g_e A_e``, ``B_mix = sum g_e B_e``, cross terms
included), so for a fixed shape the update is one low-rank matrix that :meth:`SMoLAdapter.deltas`
merges exactly. Departures from the official code, on purpose: router noise only in training
(official bug 1), and SMoL works on plain (non-quantized) linears (bug 13).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import types
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from amoeba_plugin.anatomy import Anatomy
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.options import Options, option

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
MIXINGS = ("weights", "outputs")
CONFIG_FILE = "smol_config.json"
ROUTER_FILE = "router.safetensors"
FORMAT_VERSION = 1


def expert_name(index: int) -> str:
    return f"expert_{index}"


@dataclass
class SMoLConfig(Options):
    """Hyper-parameters of the SMoL adapter (official recipe: 5 experts, r 64, alpha 16, top-2)."""

    num_experts: int = option(5, "LoRA experts per linear (1: one plain LoRA) [5]")
    rank: int = option(8, "LoRA rank of every expert [64]")
    alpha: float = option(16.0, "LoRA alpha [16]")
    top_k: int = option(2, "experts the router mixes per shape [2]")
    dropout: float = option(0.0, "LoRA dropout")
    mixing: str = option("weights", "weights: mix A and B separately (official, mergeable); outputs: sum of the "
                                    "experts' outputs", choices=MIXINGS)
    target_roles: tuple[str, ...] = option(ROLES, "linears that get experts", choices=ROLES)
    router_hidden: int = option(16, "hidden width of the shape router [16]")
    router_noise: bool = option(True, "noisy top-k while the router is in training mode (never in eval)")

    def __post_init__(self):
        try:
            super().__post_init__()
        except AmoebaError as exc:
            raise AmoebaError(f"invalid SMoL config: {exc.problem}", exc.fix) from None
        self.validate()

    def validate(self) -> None:
        def bad(what, fix):
            raise AmoebaError(f"invalid SMoL config: {what}", fix)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.num_experts) or self.num_experts < 1:
            bad(f"num_experts={self.num_experts!r}", "use an integer >= 1 (1 gives one plain LoRA)")
        if not is_int(self.rank) or self.rank < 1:
            bad(f"rank={self.rank!r}", "use an integer LoRA rank >= 1 (official: 64)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            bad(f"alpha={self.alpha!r}", "use a positive number (official: 16)")
        if not is_int(self.top_k) or self.top_k < 1 \
                or (self.num_experts > 1 and self.top_k > self.num_experts):
            bad(f"top_k={self.top_k!r} with {self.num_experts} experts",
                "use 1 <= top_k <= num_experts (official: 2 of 5)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            bad(f"dropout={self.dropout!r}", "use a LoRA dropout in [0, 1)")
        if self.mixing not in MIXINGS:
            bad(f"mixing={self.mixing!r}", f"use one of {', '.join(MIXINGS)}")
        unknown = [r for r in self.target_roles if r not in ROLES]
        if not self.target_roles or unknown or len(set(self.target_roles)) != len(self.target_roles):
            bad(f"target_roles={self.target_roles!r}",
                f"name each role at most once, from {', '.join(ROLES)}")
        if not is_int(self.router_hidden) or self.router_hidden < 1:
            bad(f"router_hidden={self.router_hidden!r}", "use an integer >= 1 (official: 16)")
        if not isinstance(self.router_noise, bool):
            bad(f"router_noise={self.router_noise!r}", "use true or false")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_roles"] = list(self.target_roles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SMoLConfig":
        if not isinstance(d, dict):
            raise AmoebaError(f"SMoL config must be a mapping, got {type(d).__name__}",
                              "pass a dict such as SMoLConfig().to_dict()")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AmoebaError(f"unknown SMoL config keys: {', '.join(unknown)}",
                              f"use only {', '.join(sorted(known))}")
        return cls(**d)


def shape_encoding(layer_mask, width_index: int, num_widths: int) -> torch.Tensor:
    """The official router input: ``layer_active_mask ++ one_hot(width index)`` as float32."""
    mask = torch.as_tensor(layer_mask, dtype=torch.float32).reshape(-1)
    if not 0 <= width_index < num_widths:
        raise AmoebaError(f"width index {width_index} outside 0..{num_widths - 1}",
                          "index into the width choices, largest first")
    return torch.cat([mask, F.one_hot(torch.tensor(width_index), num_widths).float()])


class ShapeRouter(torch.nn.Module):
    """The noisy top-k router of the official code, fed the subnet shape instead of tokens.

    ``logits = Lin(hidden->E)(Lin(in->hidden)(x))`` (no nonlinearity, as official). In training,
    ``logits += N(0,1) * softplus(Lin(in->E)(x))``; in eval the gate is deterministic.
    """

    def __init__(self, encoding_dim: int, num_experts: int, top_k: int, hidden: int = 16,
                 noise: bool = True):
        super().__init__()
        if encoding_dim < 1 or num_experts < 1 or not 1 <= top_k <= num_experts or hidden < 1:
            raise AmoebaError(
                f"invalid router: encoding_dim={encoding_dim}, num_experts={num_experts}, "
                f"top_k={top_k}, hidden={hidden}",
                "use positive sizes and 1 <= top_k <= num_experts")
        self.encoding_dim, self.num_experts, self.top_k = encoding_dim, num_experts, top_k
        self.hidden = torch.nn.Linear(encoding_dim, hidden)
        self.route = torch.nn.Linear(hidden, num_experts)
        self.noise = torch.nn.Linear(encoding_dim, num_experts) if noise else None

    def forward(self, encoding: torch.Tensor, noisy: bool | None = None) -> torch.Tensor:
        """Gate over experts (``[..., E]``): top-k softmax, exact zeros elsewhere.
        ``noisy`` defaults to ``self.training``."""
        if encoding.shape[-1] != self.encoding_dim:
            raise AmoebaError(
                f"shape encoding has {encoding.shape[-1]} features, the router expects {self.encoding_dim}",
                "encode the subnet as layer mask ++ width one-hot, exactly as at creation")
        x = encoding.to(self.hidden.weight)
        logits = self.route(self.hidden(x))
        if (self.training if noisy is None else noisy) and self.noise is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        top = logits.topk(self.top_k, dim=-1)
        sparse = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
        return sparse.softmax(-1)


class _GateState:
    """The current gate, shared by every wrapped linear (one router call per subnet, not per layer)."""

    def __init__(self, mixing: str):
        self.mixing = mixing
        self.gate: torch.Tensor | None = None
        self.active: tuple[int, ...] = ()

    def set(self, gate: torch.Tensor) -> None:
        self.gate = gate
        self.active = tuple(int(i) for i in torch.nonzero(gate.detach()).reshape(-1))

    def __deepcopy__(self, memo):
        # a gate still in the router's graph cannot be deep-copied; a copied model keeps the values
        new = _GateState(self.mixing)
        new.gate = None if self.gate is None else self.gate.detach().clone()
        new.active = self.active
        return new


def _lora_delta(module, x: torch.Tensor, gate: torch.Tensor, active, mixing: str) -> torch.Tensor:
    """The SMoL update of one peft ``lora.Linear`` for input ``x`` (already in the LoRA dtype)."""
    names = [expert_name(e) for e in active]
    first = names[0]
    g = gate.to(device=x.device, dtype=x.dtype)
    if mixing == "weights":
        a = sum(g[e] * module.lora_A[n].weight for e, n in zip(active, names))
        b = sum(g[e] * module.lora_B[n].weight for e, n in zip(active, names))
        h = module.lora_dropout[first](x)
        return F.linear(F.linear(h, a), b) * module.scaling[first]
    return sum(g[e] * module.lora_B[n](module.lora_A[n](module.lora_dropout[n](x))) * module.scaling[n]
               for e, n in zip(active, names))


def _delta_weight(module, gate: torch.Tensor, active, mixing: str) -> torch.Tensor:
    """The same update as :func:`_lora_delta`, as a weight matrix (float32, eval: no dropout)."""
    names = [expert_name(e) for e in active]
    g = gate.detach().float()
    a = [module.lora_A[n].weight.detach().float() for n in names]
    b = [module.lora_B[n].weight.detach().float() for n in names]
    s = [float(module.scaling[n]) for n in names]
    if mixing == "weights":
        a_mix = sum(g[e].to(w.device) * w for e, w in zip(active, a))
        b_mix = sum(g[e].to(w.device) * w for e, w in zip(active, b))
        return s[0] * (b_mix @ a_mix)
    return sum(g[e].to(wb.device) * se * (wb @ wa) for e, wa, wb, se in zip(active, a, b, s))


def _smol_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replaces ``forward`` of one peft ``lora.Linear`` instance (bound with ``types.MethodType``
    so ``copy.deepcopy`` rebinds it to the copy). Hooks on the module still run around it."""
    if kwargs.pop("adapter_names", None) is not None:
        raise AmoebaError("peft mixed-batch adapter_names is not supported by SMoL",
                          "select the subnet with SMoLAdapter.set_shape instead")
    state: _GateState = self._smol_state
    if self.merged:
        raise AmoebaError("SMoL experts were merged into the base weights by peft",
                          "do not call merge_adapter/merge_and_unload on a SMoL model; merge "
                          "SMoLAdapter.deltas(encoding) for one shape instead")
    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters:
        return result
    if state.gate is None:
        raise AmoebaError("no subnet shape is set on the SMoL adapter",
                          "call adapter.set_shape(encoding) before running the model")
    lora_dtype = self.lora_A[expert_name(state.active[0])].weight.dtype
    delta = _lora_delta(self, x.to(lora_dtype), state.gate, state.active, state.mixing)
    return (result + delta).to(result.dtype)


@contextlib.contextmanager
def _peft_quiet():
    """peft calls a transformers API deprecated in v5; the warning is noise for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _target_names(model, anatomy: Anatomy, roles) -> list[str]:
    """Qualified names of the decoder linears SMoL wraps; refuses anything peft's Linear cannot take."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise AmoebaError("the model already carries peft adapters",
                          "pass a fresh base model (SMoLAdapter.load re-creates the experts from disk)")
    names, seen_roles = [], set()
    for layer in anatomy.layers:
        for role in roles:
            name = layer.modules.get(role)
            if name is None:
                continue
            try:
                module = model.get_submodule(name)
            except AttributeError as err:
                raise AmoebaError(f"anatomy names '{name}' but the model has no such module",
                                  "build the anatomy from this very model (anatomy_of(model))") from err
            if type(module) is not torch.nn.Linear:
                raise AmoebaError(
                    f"SMoL wraps plain torch.nn.Linear only; '{name}' is {type(module).__name__}",
                    "load the base model unquantized (fp32/bf16/fp16) for SMoL training")
            if name == anatomy.lm_head:
                continue
            names.append(name)
            seen_roles.add(role)
    missing = [r for r in roles if r not in seen_roles]
    if missing:
        raise AmoebaError(f"target roles {', '.join(missing)} name no linear in this model",
                          f"choose target_roles among those present: "
                          f"{', '.join(sorted({r for l in anatomy.layers for r in l.modules if r in ROLES}))}")
    return names


class SMoLAdapter:
    """Owns the peft-wrapped model and the router. The base model object is modified in place by peft
    (its linears become peft ``lora.Linear`` wrappers at the same qualified names), so the host's
    anatomy names still resolve on :attr:`base_model`, and hooks registered there wrap the whole
    SMoL linear (base + experts). Register hooks after wrapping: hooks on the original
    ``nn.Linear`` only see the base part."""

    def __init__(self, model, anatomy: Anatomy, config: SMoLConfig, encoding_dim: int,
                 targets: list[str], router: ShapeRouter | None):
        self.model = model
        self.anatomy = anatomy
        self.config = config
        self.encoding_dim = encoding_dim
        self.targets = list(targets)
        self.router = router
        self._state = _GateState(config.mixing)
        self.base_model = model.base_model.model
        for name in self.targets:
            self._check_wrapped(name)
        if config.num_experts > 1:
            for name in self.targets:
                module = self.base_model.get_submodule(name)
                module._smol_state = self._state
                module.forward = types.MethodType(_smol_forward, module)
        self._mark_trainable(True)

    def _check_wrapped(self, name: str) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        module = self.base_model.get_submodule(name)
        missing = [n for n in self.expert_names if n not in getattr(module, "lora_A", {})]
        if not isinstance(module, LoraLinear) or missing:
            raise AmoebaError(f"peft did not wrap '{name}' with every SMoL expert",
                              "use an unquantized model whose anatomy matches the saved adapter")

    @property
    def expert_names(self) -> list[str]:
        return [expert_name(e) for e in range(self.config.num_experts)]

    @classmethod
    def create(cls, model, anatomy: Anatomy, config: SMoLConfig, encoding_dim: int,
               seed: int = 0) -> "SMoLAdapter":
        """Wrap ``model`` in place with ``config.num_experts`` fresh LoRA experts (B = 0, so the
        model starts out computing exactly the base) and a fresh router."""
        from peft import LoraConfig, get_peft_model

        config.validate()
        if config.num_experts > 1 and (not isinstance(encoding_dim, int) or encoding_dim < 1):
            raise AmoebaError(f"encoding_dim={encoding_dim!r}",
                              "pass the length of the shape encoding (num_layers + number of widths)")
        targets = _target_names(model, anatomy, config.target_roles)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          bias="none", target_modules=targets, init_lora_weights=True)
        device = next(model.parameters()).device
        with _peft_quiet(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            peft_model = get_peft_model(model, lora, adapter_name=expert_name(0))
            for e in range(1, config.num_experts):
                peft_model.add_adapter(expert_name(e), copy.deepcopy(lora))
            router = None
            if config.num_experts > 1:
                router = ShapeRouter(encoding_dim, config.num_experts, config.top_k,
                                     config.router_hidden, config.router_noise).to(device)
        return cls(peft_model, anatomy, config, encoding_dim, targets, router)

    @classmethod
    def load(cls, model, anatomy: Anatomy, directory, is_trainable: bool = False) -> "SMoLAdapter":
        """Re-create a saved adapter on a fresh copy of the same base model (returned in eval mode)."""
        from peft import PeftModel

        from amoeba_plugin.statefiles import read_json, read_tensors

        directory = Path(directory)
        fix = "point to a complete directory written by SMoLAdapter.save (in a bundle: run `amoeba amoeballm train` again)"
        meta = read_json(directory / CONFIG_FILE, "SMoL adapter config", fix)
        experts = meta["config"].get("num_experts", 1) if isinstance(meta.get("config"), dict) else 1
        # the router is read before the experts: its damage fails before peft touches the model
        router_state = read_tensors(directory / ROUTER_FILE, "SMoL router", fix) if experts > 1 else None
        if meta.get("format") != FORMAT_VERSION:
            raise AmoebaError(f"unsupported SMoL adapter format {meta.get('format')!r}",
                              f"re-save the adapter with this version (format {FORMAT_VERSION})")
        config = SMoLConfig.from_dict(meta["config"])
        sig, saved_sig = anatomy.shape_signature(), meta.get("shape_signature", "")
        if sig and saved_sig and sig != saved_sig:
            raise AmoebaError("the SMoL adapter was trained on a model of another shape",
                              "load it onto the same base model it was created on")
        targets = _target_names(model, anatomy, config.target_roles)
        if targets != meta["targets"]:
            raise AmoebaError("the model's linears differ from the ones the adapter was saved with",
                              "load it onto the same base model it was created on")
        try:
            with _peft_quiet():
                peft_model = PeftModel.from_pretrained(model, str(directory / expert_name(0)),
                                                       adapter_name=expert_name(0),
                                                       is_trainable=is_trainable)
                for e in range(1, config.num_experts):
                    peft_model.load_adapter(str(directory / expert_name(e)),
                                            adapter_name=expert_name(e), is_trainable=is_trainable)
        except Exception as err:  # noqa: BLE001 - OSError, ValueError, SafetensorError from a damaged expert
            raise AmoebaError(f"cannot load the SMoL experts from {directory}: {type(err).__name__}: {err}",
                              fix) from None
        router = None
        if config.num_experts > 1:
            device = next(model.parameters()).device
            router = ShapeRouter(meta["encoding_dim"], config.num_experts, config.top_k,
                                 config.router_hidden, config.router_noise)
            router.load_state_dict(router_state)
            router.to(device)
        adapter = cls(peft_model, anatomy, config, meta["encoding_dim"], targets, router)
        adapter._mark_trainable(is_trainable)
        return adapter.eval()

    def save(self, directory) -> None:
        """peft ``save_pretrained`` of every expert (``directory/expert_i/``), plus the router
        (``router.safetensors``) and ``smol_config.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with _peft_quiet():
            self.model.save_pretrained(str(directory), selected_adapters=self.expert_names)
        if self.router is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.router.state_dict().items()},
                      str(directory / ROUTER_FILE))
        meta = {"format": FORMAT_VERSION, "config": self.config.to_dict(),
                "encoding_dim": self.encoding_dim, "targets": self.targets,
                "shape_signature": self.anatomy.shape_signature()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1))

    def _gate(self, encoding, noisy: bool | None = None) -> torch.Tensor:
        if self.router is None:
            return torch.ones(1)
        encoding = torch.as_tensor(encoding, dtype=torch.float32)
        if encoding.dim() != 1:
            raise AmoebaError(f"shape encoding must be one vector, got shape {tuple(encoding.shape)}",
                              "pass one subnet's layer mask ++ width one-hot")
        return self.router(encoding.to(self.router.hidden.weight.device), noisy=noisy)

    def set_shape(self, encoding) -> torch.Tensor:
        """Compute the gate ONCE for this subnet and broadcast it to every layer. In training mode the
        gate stays in the router's graph (call again before each forward/backward); in eval it is
        noise-free and detached."""
        gate = self._gate(encoding)
        if self.router is not None and not self.router.training:
            gate = gate.detach()
        self._state.set(gate)
        return gate

    @torch.no_grad()
    def deltas(self, encoding) -> dict[str, torch.Tensor]:
        """``{f"{module}.weight": delta_W}`` for one shape, noise-free, in each base weight's dtype:
        ``W + delta_W`` reproduces the adapter's forward (eval) exactly, up to rounding."""
        gate = self._gate(encoding, noisy=False).detach()
        active = tuple(int(i) for i in torch.nonzero(gate).reshape(-1))
        out = {}
        for name in self.targets:
            module = self.base_model.get_submodule(name)
            weight = module.get_base_layer().weight
            delta = _delta_weight(module, gate, active, self.config.mixing)
            out[f"{name}.weight"] = delta.to(device=weight.device, dtype=weight.dtype).contiguous()
        return out

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every expert's A and B, and the router; nothing of the base."""
        params = [(n, p) for n, p in self.model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
        if self.router is not None:
            params += [(f"router.{n}", p) for n, p in self.router.named_parameters()]
        return params

    def _mark_trainable(self, flag: bool) -> None:
        for n, p in self.model.named_parameters():
            p.requires_grad_(flag and (".lora_A." in n or ".lora_B." in n))
        if self.router is not None:
            self.router.requires_grad_(flag)

    def train(self, mode: bool = True) -> "SMoLAdapter":
        """LoRA dropout and router noise follow ``mode``; base weights stay frozen either way."""
        self.model.train(mode)
        if self.router is not None:
            self.router.train(mode)
        return self

    def eval(self) -> "SMoLAdapter":
        return self.train(False)

    def unload(self):
        """Remove every expert (nothing merged) and return the original base model."""
        for name in self.targets:
            self.base_model.get_submodule(name).__dict__.pop("forward", None)
        return self.model.unload()
