"""MLX folders checked in mlx-lm: recognised as MLX, the whole battery passes on the demo
model's 4-bit MLX folder against its source, and broken copies fail the right check."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from quantkit.artifact.locate import is_mlx_folder, locate_artifact

pytest.importorskip("mlx_lm")


def _by_name(report) -> dict:
    return {c.name: c for c in report.checks}


def _safetensors(path: Path, fmt: str) -> None:
    header = json.dumps({"__metadata__": {"format": fmt}, "w": {"dtype": "F32", "shape": [1],
                         "data_offsets": [0, 4]}}).encode()  # fmt: skip
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def test_mlx_folders_are_recognised(mlx_demo: Path, demo_model: Path, tmp_path: Path) -> None:
    assert locate_artifact(mlx_demo).kind == "mlx"  # config.json's `quantization` table
    assert locate_artifact(demo_model).kind == "safetensors"
    plain = tmp_path / "bf16"  # an unquantized MLX folder: only the weights' header tells
    plain.mkdir()
    (plain / "config.json").write_text('{"model_type": "llama"}')
    _safetensors(plain / "model.safetensors", "pt")
    assert not is_mlx_folder(plain)
    _safetensors(plain / "model.safetensors", "mlx")
    assert is_mlx_folder(plain) and locate_artifact(plain).kind == "mlx"


def test_check_converted_dispatches_mlx_folders(mlx_demo: Path, monkeypatch) -> None:
    from quantkit.inspection import convert_checks

    seen = []
    monkeypatch.setattr(convert_checks, "check_mlx", lambda f, s: seen.append(f) or [])
    monkeypatch.setattr(convert_checks, "check_safetensors", lambda f, s: 1 / 0)
    assert convert_checks.check_converted(mlx_demo, source=None) == []  # type: ignore[arg-type]
    assert seen == [mlx_demo]


@pytest.mark.slow
def test_inspect_passes_against_the_source(mlx_demo: Path, demo_model: Path) -> None:
    from quantkit.inspection import inspect

    report = inspect(mlx_demo, against=demo_model, generate=True)
    assert report.kind == "mlx"
    assert report.passed, [c for c in report.checks if not c.passed]
    checks = _by_name(report)
    assert "25 added tokens of the source encode to their ids in mlx-lm" in checks[
        "special tokens single ids"].evidence  # fmt: skip
    assert "'<|im_end|>' (id 2)" in checks["turn end is an mlx-lm stop token"].evidence
    assert "26 of 26 renderings" in checks["chat templates render identically"].evidence
    stream = checks["streaming detokenizer prints tags whole"].evidence
    assert "<think>" in stream and "<tool_call>" in stream
    assert checks["greedy generation stops"].evidence.startswith("stopped at id 2")


def test_inspect_without_a_source(mlx_demo: Path) -> None:
    from quantkit.inspection import inspect

    report = inspect(mlx_demo)
    assert report.passed, [c for c in report.checks if not c.passed]


def test_a_dropped_added_token_fails(mlx_copy: Path, demo_model: Path) -> None:
    from quantkit.inspection import inspect

    path = mlx_copy / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<think>"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    checks = _by_name(inspect(mlx_copy, against=demo_model))
    assert not checks["special tokens single ids"].passed
    assert "'<think>' (id 49158)" in checks["special tokens single ids"].evidence
    assert not checks["streaming detokenizer prints tags whole"].passed
    assert (
        "tokenizer.json is not byte-identical" in checks["chat templates byte-identical"].evidence
    )
    assert not checks["tokenization parity"].passed


def test_an_altered_template_fails(mlx_copy: Path, demo_model: Path) -> None:
    from quantkit.inspection import inspect

    path = mlx_copy / "additional_chat_templates" / "tool_use.jinja"
    path.write_text(path.read_text(encoding="utf-8").replace("<tools>", "<tool>", 1))
    checks = _by_name(inspect(mlx_copy, against=demo_model))
    assert "template 'tool_use' differs from the source" in checks[
        "chat templates byte-identical"].evidence  # fmt: skip
    assert not checks["chat templates render identically"].passed
    assert checks["special tokens single ids"].passed and checks["tokenization parity"].passed


def test_a_missing_turn_end_stop_fails(mlx_copy: Path, demo_model: Path) -> None:
    from quantkit.inspection import inspect

    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        path = mlx_copy / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("eos_token_id", None)
        if name == "tokenizer_config.json":
            data["eos_token"] = "<|endoftext|>"
        path.write_text(json.dumps(data), encoding="utf-8")
    checks = _by_name(inspect(mlx_copy, against=demo_model))
    turn_end = checks["turn end is an mlx-lm stop token"]
    assert not turn_end.passed and "not at the turn end '<|im_end|>'" in turn_end.evidence
