"""Shared fixtures. Fixture models are built once per machine into a cache folder
(QUANTKIT_TEST_CACHE, default .cache/test-fixtures in the checkout) and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantkit.runtime.llama_server import build_folder as llama_server_build

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pin_test_worker() -> None:
    """Under pytest-xdist (scripts/test.sh runs two workers), give each worker its own share
    of the CPUs, before anything starts a thread pool: quantkit sizes its threads by the
    affinity (runtime.cpu.threads), PyTorch and the llama.cpp processes a test starts
    inherit it, and two workers never put four spinning threads on two cores."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker[2:]) % len(cpus) :: count] or cpus
    os.sched_setaffinity(0, share)


_pin_test_worker()

# The llama-server scripts/setup.sh built into the user's cache (~/.cache/quantkit), found
# before QUANTKIT_CACHE is pointed at the test cache below.
# llama-quantize and llama-imatrix are built beside it (tests/backends/gguf/imatrix/
# test_interop.py compares quantkit with them).
_built_bin = llama_server_build() / "bin"
if (_built_bin / "llama-server").is_file():
    os.environ.setdefault("QUANTKIT_LLAMA_SERVER", str(_built_bin / "llama-server"))
    os.environ.setdefault("QUANTKIT_LLAMA_BIN", str(_built_bin))
# Reference logits and other quantkit caches go into the test cache, not ~/.cache.
os.environ.setdefault(
    "QUANTKIT_CACHE", str(REPO_ROOT / ".cache" / "test-fixtures" / "quantkit-cache")
)
# llama.cpp's OpenMP threads spin while they wait; on 2 shared cores that makes every
# evaluation 2-3x slower. Set before anything loads llama_cpp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    cache = Path(os.environ.get("QUANTKIT_TEST_CACHE", REPO_ROOT / ".cache" / "test-fixtures"))
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def demo_model(fixture_cache: Path) -> Path:
    """The embedded demo model (SmolLM2-135M-Instruct with Hermes tokens), as an HF folder."""
    from quantkit.demo.build import ensure_demo_model

    return ensure_demo_model(fixture_cache / "demo")


# The shared fixtures live in tests/support/; importing them here puts them in every test
# module's scope (pytest finds fixtures in conftest.py's namespace).
from support.hub import demo_artifact, demo_artifact_cached, fake_hub, hub  # noqa: E402,F401
from support.llama_server import no_server  # noqa: E402,F401
from support.mlx import mlx_copy, mlx_demo  # noqa: E402,F401
from support.models import (  # noqa: E402,F401
    bf16_gguf,
    demo_bf16_imatrix,
    demo_model_8_layers,
    demo_q8,
    llama31_model,
    llama31_model_special_tags,
    llama31_model_tf4_config,
    llama31_tokenizer_files,
    q8_gguf,
    qwen3_model,
    reference_converter,
    reference_gguf,
)
