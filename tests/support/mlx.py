"""The demo model as an MLX 4-bit folder, built once per machine into the fixture cache
through quantkit.convert (tests/conftest.py makes the fixtures available everywhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures.models import build_once


def build_mlx_demo(cache: Path, demo_model: Path) -> Path:
    pytest.importorskip("mlx_lm")
    import quantkit
    from quantkit.evaluation.options import EvalOptions

    def build(partial: Path) -> None:
        partial.rmdir()  # convert makes its OUT itself
        # unchecked here: the inspection tests check it
        quantkit.convert(str(demo_model), format="mlx", quant="4bit", out=str(partial),
                         verify=False, evaluation=EvalOptions(enabled=False))  # fmt: skip

    return build_once(cache / "demo-mlx-4bit", build)


@pytest.fixture(scope="session")
def mlx_demo(fixture_cache: Path, demo_model: Path) -> Path:
    """The demo model quantized to MLX 4-bit (read it; copy it before changing anything)."""
    return build_mlx_demo(fixture_cache, demo_model)


@pytest.fixture()
def mlx_copy(mlx_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the MLX demo folder, weights linked, other files copied."""
    folder = tmp_path / "mlx"
    shutil.copytree(mlx_demo, folder, copy_function=_link_or_copy)
    return folder


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(".safetensors"):
        try:
            Path(dst).hardlink_to(src)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
