"""llama.cpp's log routed through quantkit (runtime.llama_cpp): captured and kept as the
last error even after other code has set llama.cpp's one log callback to its own, or to
none (as llama-cpp-python's users and a test of ours once did, which left every later
capture empty)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from quantkit.runtime.llama_cpp import captured_log, last_error, model_params, silence_llama_cpp

llama_cpp = pytest.importorskip("llama_cpp")


def _fail_to_load(path: Path) -> None:
    """A load that fails at once, and tells why only in llama.cpp's log."""
    assert llama_cpp.llama_model_load_from_file(str(path).encode(), model_params()) is None


@pytest.mark.parametrize("other", ["a callback of its own", "no callback"])
def test_the_log_is_captured_after_other_code_replaced_the_callback(
    other: str, tmp_path: Path
) -> None:
    silence_llama_cpp()
    foreign: list[bytes] = []

    @llama_cpp.llama_log_callback
    def theirs(level, text, user):  # noqa: ARG001 - ctypes callback signature
        foreign.append(text)

    replacement = theirs if other == "a callback of its own" else None
    llama_cpp.llama_log_set(ctypes.cast(replacement, llama_cpp.llama_log_callback), None)
    missing = tmp_path / "missing.gguf"
    with captured_log() as log:
        silence_llama_cpp()  # what every load of quantkit's does first
        _fail_to_load(missing)
    assert f"failed to open GGUF file '{missing}'" in "".join(log)
    assert "failed to load model" in last_error()
    assert foreign == []
