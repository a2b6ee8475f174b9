"""Interop with llama.cpp's own `llama-imatrix` and `llama-quantize`.

scripts/setup.sh builds them beside llama-server from the llama.cpp that llama-cpp-python
vendors (quantkit.runtime.llama_server.TOOLS, kept in ~/.cache/quantkit) and tests/conftest
points QUANTKIT_LLAMA_BIN at them: llama-imatrix reads a quantkit imatrix and writes it
back byte for byte, and llama-quantize given that file makes the same GGUF as quantkit's
own call of llama_model_quantize. Without them (a machine where the build failed) these
two tests are skipped with that reason."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

BIN = Path(os.environ.get("QUANTKIT_LLAMA_BIN", "/nonexistent"))
pytestmark = pytest.mark.skipif(
    not (BIN / "llama-imatrix").is_file() or not (BIN / "llama-quantize").is_file(),
    reason="QUANTKIT_LLAMA_BIN does not hold llama-imatrix and llama-quantize",
)


@pytest.fixture(scope="module")
def made(demo_bf16_imatrix: tuple[Path, Path]) -> tuple[Path, Path]:
    return demo_bf16_imatrix


def test_llama_imatrix_writes_our_file_back_unchanged(made, tmp_path: Path) -> None:
    bf16, ours = made
    out = tmp_path / "rewritten.gguf"
    subprocess.run([BIN / "llama-imatrix", "-m", bf16, "--in-file", ours, "-o", out],
                   check=True, capture_output=True)  # fmt: skip
    assert out.read_bytes() == ours.read_bytes()


@pytest.mark.slow
def test_llama_quantize_with_our_file_makes_the_same_gguf(made, tmp_path: Path) -> None:
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix
    from quantkit.backends.gguf.quantize import quantize_gguf

    bf16, ours = made
    theirs, mine = tmp_path / "llama-quantize.gguf", tmp_path / "quantkit.gguf"
    subprocess.run([BIN / "llama-quantize", "--imatrix", ours, bf16, theirs, "Q4_K_M", "2"],
                   check=True, capture_output=True)  # fmt: skip
    quantize_gguf(bf16, mine, "Q4_K_M", imatrix=load_imatrix(ours), imatrix_file=str(ours))
    assert theirs.read_bytes() == mine.read_bytes()
