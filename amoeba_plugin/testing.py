"""amoeba_plugin's testing kit, a pytest plugin (as pytest ships ``pytester``).

Installed with the host through the ``pytest11`` entry point, so in any environment that has
amoeba-plugin the fixtures below are simply there: the host's tests, each plugin distribution's
tests and a third party's tests use the same tiny models, windows and registration helper instead
of copying conftest code. Outside pytest the functions work too (``from amoeba_plugin.testing import
make_tiny``).

Functions: :func:`make_tiny` (a tiny model of any supported family), :func:`save_tiny` (one saved
with a :func:`tiny_tokenizer`, as a directory the CLI loads), :func:`token_ids` (random
token windows for tiny models), :func:`text_windows` (calibration windows of shipped text for the
embedded model), :func:`registered_plugin` (register a plugin object for a ``with`` block) and
:func:`assert_soft_equals_sliced` (the masked forward equals the sliced forward) and :func:`run_killed`
(run code in a subprocess that is killed at a named state change, for crash-safety tests).

Fixtures: ``tiny_model`` (parametrised over every family), ``tiny_llama``, ``input_ids``,
``tiny_windows``, ``embedded_windows`` and ``register_plugin``.

Heavy imports (transformers' model classes, the plugin manager, surgery) happen inside the functions,
so loading this plugin adds little to what ``import amoeba_plugin`` costs; the package itself never
imports this module (nor pytest).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

import pytest

#: the shape every tiny model shares: 4 layers, hidden 64, 8 query heads in 2 KV groups (4 per group),
#: head_dim 8 (4 RoPE pairs), MLP 96, vocabulary 128
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
#: family -> (transformers config class, model class, family-specific config keys); class names, so
#: reading the list imports nothing
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 64}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
}
#: the embedded model shipped with the host (real weights and tokenizer, trained on sotu:train)
EMBEDDED = "amoeba-tiny-sotu"


def make_tiny(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised tiny model whose norms and biases are perturbed, so masks matter.

    The same family, seed and overrides give the same weights, so a test can rebuild a fresh copy to
    compare against. ``overrides`` are config keys (e.g. ``tie_word_embeddings=True``)."""
    import torch
    import transformers

    cfg_name, model_name, extra = FAMILIES[family]
    cfg_cls, model_cls = getattr(transformers, cfg_name), getattr(transformers, model_name)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**COMMON, **extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


#: the words of :func:`tiny_tokenizer`'s training text
WORDS = ("the people of the united states congress nation government war peace law year world "
         "economy freedom children work health tax america president union state new").split()


def tiny_tokenizer(vocab_size: int = COMMON["vocab_size"]):
    """A small BPE tokenizer trained in-process (no downloads), wrapped for transformers: what a
    tiny model needs to be saved as a directory the CLI loads."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = torch.Generator().manual_seed(0)
    text = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (40,), generator=rng)) for _ in range(200)]
    text.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab_size,
                                                      special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny(path, family: str = "llama", **overrides):
    """Save :func:`make_tiny` and a :func:`tiny_tokenizer` to ``path`` (a model directory for the CLI,
    ``from_pretrained`` or an export test); returns ``path``."""
    model = make_tiny(family, **overrides)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path


def token_ids(n: int, seq_len: int, seed: int = 0, vocab_size: int = COMMON["vocab_size"]):
    """``n`` windows of uniformly random token ids ``[n, seq_len]``: calibration or input for a tiny
    model (whose weights are random too, so real text would mean nothing to it)."""
    import torch

    return torch.randint(0, vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def text_windows(n: int = 4, seq_len: int = 64, seed: int = 0, source: str = "sotu:train", tokenizer=None):
    """``n`` calibration windows of shipped text, tokenized by ``tokenizer`` (default: the embedded
    model's), exactly as a run with ``--calibration SOURCE --samples N --seq-len L --seed S`` samples them."""
    from .data import calibration_windows

    return calibration_windows(tokenizer if tokenizer is not None else embedded_tokenizer(), source, n, seq_len, seed)


@lru_cache(maxsize=1)
def embedded_tokenizer():
    """The embedded model's tokenizer (loaded once; the model itself is not loaded)."""
    from transformers import AutoTokenizer

    from .models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED))


@contextmanager
def registered_plugin(plugin: Any, name: str) -> Iterator[Any]:
    """Register an in-process plugin object (hook implementations) under ``name`` for a ``with`` block.

    Registries are refreshed on entry and exit, so whatever the plugin registered (methods, metrics,
    exporters, ...) is available inside the block and gone after it, even when the block raises or
    the test already unregistered it."""
    from . import plugins

    plugins.register_plugin(plugin, name)
    try:
        yield plugin
    finally:
        if plugins.get_plugin_manager().has_plugin(name):
            plugins.unregister_plugin(name)


def assert_soft_equals_sliced(model, anatomy, plan, input_ids, patch=None, atol: float = 1e-5):
    """Assert that the masked forward (``apply_soft``) equals the physically sliced model's forward.

    This is the host's contract for a plan (and a weight ``patch``, if the method returns one): what
    the method scored softly is what the exported model runs. Returns the sliced model, so a test
    can go on checking it (parameter count, save and reload)."""
    import torch

    from .surgery import apply_soft, slice_model

    with torch.no_grad():
        with apply_soft(model, anatomy, plan, patch):
            masked = model(input_ids=input_ids).logits
        sliced = slice_model(model, anatomy, plan, patch=patch)
        small = sliced(input_ids=input_ids).logits
    torch.testing.assert_close(small, masked, atol=atol, rtol=0)
    return sliced


def run_killed(code: str, kill_at: str, timeout: float = 300, **env: str):
    """Run ``code`` (Python) in a fresh interpreter that kills itself with SIGKILL at the state change
    ``kill_at`` (see ``amoeba_plugin.export.atomic``: ``AMOEBA_TEST_KILL_AT``), as a crash would, and
    assert it died there. ``env`` adds environment variables. Returns the CompletedProcess."""
    import os
    import signal
    import subprocess
    import sys

    full = {**os.environ, "AMOEBA_TEST_KILL_AT": kill_at, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == -signal.SIGKILL, (
        f"expected a kill at {kill_at}, got exit code {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    """A fresh tiny model of each family in turn (the test runs once per family)."""
    return make_tiny(request.param)


@pytest.fixture
def tiny_llama():
    """A fresh tiny Llama (seed 0)."""
    return make_tiny("llama")


@pytest.fixture
def input_ids():
    """Two random windows of 12 tokens for a tiny model."""
    return token_ids(2, 12, seed=1)


@pytest.fixture
def tiny_windows():
    """Eight random calibration windows of 32 tokens for a tiny model."""
    return token_ids(8, 32, seed=0)


@pytest.fixture
def embedded_windows():
    """Four calibration windows of 64 tokens of ``sotu:train`` for the embedded model (seed 0)."""
    return text_windows(4, 64, seed=0)


@pytest.fixture
def register_plugin() -> Iterator[Callable[[Any, str], Any]]:
    """``register_plugin(plugin, name)`` registers an in-process plugin for this test only; everything
    registered is unregistered after the test (last first), so no test leaks a method into the next."""
    names: list[str] = []

    def register(plugin: Any, name: str) -> Any:
        from . import plugins

        names.append(name)
        plugins.register_plugin(plugin, name)
        return plugin

    yield register
    from . import plugins

    for name in reversed(names):
        if plugins.get_plugin_manager().has_plugin(name):
            plugins.unregister_plugin(name)


def assert_one_error_line(result, *fragments: str) -> str:
    """A click ``result`` of bad input: exit status 2, exactly one ``error: ... Fix: ...`` line on
    stderr holding every fragment, no traceback. Returns that line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Fix:" in lines[0] and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


__all__ = [
    "COMMON", "EMBEDDED", "FAMILIES", "WORDS", "assert_one_error_line", "assert_soft_equals_sliced", "embedded_tokenizer", "make_tiny",
    "registered_plugin", "run_killed", "save_tiny", "text_windows", "tiny_tokenizer", "token_ids",
]
