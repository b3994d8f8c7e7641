#!/usr/bin/env bash
# Set up .venv for amoeba-plugin: CPU torch (pinned, so pip never pulls a CUDA build), the host
# with all optional extras, and every method plugin under plugins/ (each its own distribution that
# registers through the `amoeba_plugin` entry-point group, exactly as a third party would).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
plugins=()
for d in plugins/*/; do [ -f "$d/pyproject.toml" ] && plugins+=(-e "$d"); done
.venv/bin/pip install -q --disable-pip-version-check -e ".[all]" "${plugins[@]}"
echo "amoeba-plugin is installed in .venv ($(.venv/bin/amoeba --version 2>/dev/null || echo 'amoeba'))"
echo "main job: .venv/bin/amoeba prune amoeba-tiny-sotu --method flap --budget 0.5 --output runs/tiny-50 --overwrite"
