"""safetensors headers validated as the safetensors library validates them
(quantkit.formats.safetensors_index): each way a header can be broken fails with a
SourceModelError naming the file and the tensor, from `read_header`, from `load_source`,
and from `convert` before anything is written at --out.

Every broken file is a copy of a real fixture shard's header over a sparse data section
(tests/support/broken_models.py), with one thing changed."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from support.broken_models import (
    convert_refused,
    linked_copy,
    raw_header,
    write_laid_out,
    write_sparse,
)

from quantkit.errors import SourceModelError
from quantkit.formats.safetensors_index import DTYPE_BITS, read_header, shard_files
from quantkit.source.model import load_source

EMBED = "model.embed_tokens.weight"
NORM0 = "model.layers.0.input_layernorm.weight"  # the tensor laid out right after EMBED


@pytest.fixture
def demo_copy(demo_model: Path, tmp_path: Path) -> Path:
    return linked_copy(demo_model, tmp_path / "model")


def _data_bytes(header: dict[str, Any]) -> int:
    return max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")


# --- the real files pass --------------------------------------------------------------------


def test_the_fixture_shards_are_valid(demo_model: Path, llama31_model: Path) -> None:
    for folder in (demo_model, llama31_model):
        for shard in shard_files(folder):
            header, start = read_header(shard)
            assert start == 8 + struct.unpack("<Q", shard.open("rb").read(8))[0]
            assert len(header) > 1


def test_a_relaid_header_is_valid(demo_model: Path, tmp_path: Path) -> None:
    """The helper every other test builds on writes valid files."""
    path = write_laid_out(tmp_path / "m.safetensors", raw_header(demo_model / "model.safetensors"))
    header, _ = read_header(path)
    assert header == raw_header(demo_model / "model.safetensors")


# --- each break, through read_header ---------------------------------------------------------


def _overlap(h: dict[str, Any]) -> None:
    begin, end = h[NORM0]["data_offsets"]
    h[NORM0]["data_offsets"] = [begin - 2, end - 2]


def _gap(h: dict[str, Any]) -> None:
    for name, info in h.items():
        if name not in ("__metadata__", EMBED):
            info["data_offsets"] = [o + 64 for o in info["data_offsets"]]


def _wrong_length(h: dict[str, Any]) -> None:
    h[EMBED]["shape"] = [49160, 575]  # offsets unchanged: 576 bytes too many for the shape


def _unknown_dtype(h: dict[str, Any]) -> None:
    h[EMBED]["dtype"] = "BF17"


def _bad_offsets(h: dict[str, Any]) -> None:
    h[NORM0]["data_offsets"] = [h[NORM0]["data_offsets"][1], h[NORM0]["data_offsets"][0]]


def _bad_shape(h: dict[str, Any]) -> None:
    h[NORM0]["shape"] = [-576]


def _bad_metadata(h: dict[str, Any]) -> None:
    h["__metadata__"] = {"format": 1}


BREAKS = {
    "overlap": (_overlap, f"tensor {NORM0} (bytes 56632318-56633470) overlaps {EMBED}"),
    "gap": (_gap, f"64 bytes after {EMBED} belong to no tensor (next: {NORM0})"),
    "wrong-byte-length": (
        _wrong_length,
        f"tensor {EMBED} (BF16 [49160, 575]) needs 56534000 bytes but its data_offsets "
        "[0, 56632320] hold 56632320",
    ),
    "unknown-dtype": (
        _unknown_dtype,
        f"tensor {EMBED} has dtype 'BF17', which safetensors does not know",
    ),
    "reversed-offsets": (_bad_offsets, f"tensor {NORM0} has data_offsets [56633472, 56632320]"),
    "negative-dim": (_bad_shape, f"tensor {NORM0} has shape [-576]"),
    "metadata-not-strings": (_bad_metadata, "its __metadata__ is not a map of strings"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_header_names_the_file_and_the_tensor(
    demo_model: Path, tmp_path: Path, case: str
) -> None:
    edit, expected = BREAKS[case]
    header = raw_header(demo_model / "model.safetensors")
    data = _data_bytes(header) + (64 if case == "gap" else 0)
    edit(header)
    path = write_sparse(tmp_path / "model.safetensors", header, data)
    with pytest.raises(SourceModelError) as info:
        read_header(path)
    message = str(info.value)
    assert f"{path} is not a valid safetensors file: {expected}" in message
    assert "download it again" in message


def test_bytes_after_the_last_tensor_are_refused(demo_model: Path, tmp_path: Path) -> None:
    """safetensors refuses a file its tensors do not cover to the end (transformers could
    not load it): so does quantkit, rather than converting what may be a mixed-up file."""
    header = raw_header(demo_model / "model.safetensors")
    path = write_laid_out(tmp_path / "model.safetensors", header)
    with path.open("ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(SourceModelError, match="it has 10 bytes after the last tensor's data"):
        read_header(path)


def test_absurd_header_length_fails_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}" + b"\0" * 100)
    with pytest.raises(SourceModelError) as info:
        read_header(path)
    assert f"{path} is not a valid safetensors file" in str(info.value)
    assert f"header length field says {2**62} bytes; safetensors allows at most 100000000" in str(
        info.value
    )


def test_header_that_is_not_an_object(tmp_path: Path) -> None:
    raw = b"[1, 2]  "
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(SourceModelError, match="its header is not a JSON object"):
        read_header(path)


def test_sub_byte_dtypes_must_end_on_a_byte(tmp_path: Path) -> None:
    """F4 packs two elements a byte: three of them are one and a half bytes, which the
    safetensors library refuses; four are two bytes, which it accepts."""
    assert DTYPE_BITS["F4"] == 4
    good = write_sparse(tmp_path / "good.safetensors",
                        {"x": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}})  # fmt: skip
    assert read_header(good)[0]["x"]["shape"] == [4]
    bad = write_sparse(tmp_path / "bad.safetensors",
                       {"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}})  # fmt: skip
    with pytest.raises(SourceModelError, match=r"tensor x \(F4 \[3\]\) does not end on a byte"):
        read_header(bad)


# --- through load_source and convert -----------------------------------------------------------


def test_overlapping_tensors_refuse_the_convert(demo_copy: Path, tmp_path: Path) -> None:
    shard = demo_copy / "model.safetensors"
    header = raw_header(shard)
    data = _data_bytes(header)
    _overlap(header)
    write_sparse(shard, header, data)
    convert_refused(demo_copy, tmp_path, str(shard), f"tensor {NORM0}", f"overlaps {EMBED}")


def test_wrong_byte_length_in_a_second_shard(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "model")
    shard = folder / "model-00002-of-00002.safetensors"
    header = raw_header(shard)
    name = next(k for k in header if k != "__metadata__")
    data = _data_bytes(header)
    header[name]["data_offsets"][1] -= 2  # one BF16 value short
    write_sparse(shard, header, data)
    with pytest.raises(SourceModelError) as info:
        load_source(folder)
    assert str(shard) in str(info.value) and f"tensor {name}" in str(info.value)
    convert_refused(folder, tmp_path, shard.name, f"tensor {name}")


def test_unknown_dtype_refuses_the_convert(demo_copy: Path, tmp_path: Path) -> None:
    shard = demo_copy / "model.safetensors"
    header = raw_header(shard)
    data = _data_bytes(header)
    header[NORM0]["dtype"] = "Q4_K"
    write_sparse(shard, header, data)
    convert_refused(demo_copy, tmp_path, f"tensor {NORM0} has dtype 'Q4_K'")


def test_absurd_header_length_refuses_the_convert(demo_copy: Path, tmp_path: Path) -> None:
    shard = demo_copy / "model.safetensors"
    shard.unlink()
    shard.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    convert_refused(demo_copy, tmp_path, "safetensors allows at most 100000000")


# --- the index --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight_map", "expected"),
    [
        ({"lm_head.weight": "../../etc/passwd"}, "maps lm_head.weight to '../../etc/passwd'"),
        ({}, "it has no weight_map"),
        ([], "it is not a JSON object"),
        ("{", "it is not valid JSON"),
    ],
)
def test_a_hostile_or_broken_index_is_refused(
    llama31_model: Path, tmp_path: Path, weight_map: Any, expected: str
) -> None:
    folder = linked_copy(llama31_model, tmp_path / "model")
    index = folder / "model.safetensors.index.json"
    if isinstance(weight_map, str):
        index.write_text(weight_map)
    else:
        index.write_text(json.dumps({"weight_map": weight_map} if weight_map != [] else []))
    with pytest.raises(SourceModelError, match="is not a valid safetensors index") as info:
        shard_files(folder)
    assert expected in str(info.value)
