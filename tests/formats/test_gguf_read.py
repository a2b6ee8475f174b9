"""quantkit's one GGUF header reader (quantkit.formats.gguf_read) against gguf-py: the same
value-type table, the same values, tensor table and data offsets, and the byte sizes the split
planner counts on are the ones gguf-py's writer produces."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys

from quantkit.errors import QuantkitError
from quantkit.formats import gguf_keys
from quantkit.formats.gguf_read import (
    SCALAR_FORMATS,
    SCALAR_SIZES,
    TensorTypeError,
    chat_template_key,
    chat_templates,
    ggml_type_name,
    kv_bytes,
    read_f32_tensor,
    read_header,
    read_metadata,
    tensor_info_bytes,
    tensor_types,
)

F32 = np.arange(24, dtype=np.float32).reshape(4, 6)
F16 = np.ones((2, 8), dtype=np.float16)
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _write(path: Path, *, alignment: int | None = None) -> Path:
    writer = GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_uint8("t.u8", 7)
    writer.add_int8("t.i8", -7)
    writer.add_uint16("t.u16", 65535)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000)
    writer.add_float32("t.f32", 0.5)
    writer.add_bool("t.bool", True)
    writer.add_uint64("t.u64", 2**40)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 0.25)
    writer.add_string("t.str", "héllo")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "<think>", ""])
    writer.add_chat_template(TEMPLATE)
    writer.add_key_value(chat_template_key("tool_use"), "TOOLS", GGUFValueType.STRING)
    writer.add_tensor("a.weight", F32)
    writer.add_tensor("b.weight", F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    return _write(tmp_path / "small.gguf")


def test_value_type_table_is_gguf_pys() -> None:
    """Every GGUF value type gguf-py knows is packed here (or is STRING / ARRAY), with the
    width gguf-py's own reader gives it."""
    fixed = set(GGUFValueType) - {GGUFValueType.STRING, GGUFValueType.ARRAY}
    assert set(SCALAR_FORMATS) == fixed
    for vtype, size in SCALAR_SIZES.items():
        assert size == np.dtype(GGUFReader.gguf_scalar_to_np[vtype]).itemsize, vtype.name


def test_metadata_equals_gguf_pys_reading(small_gguf: Path) -> None:
    ours = read_metadata(small_gguf, lambda key: True)
    fields = GGUFReader(small_gguf).fields
    theirs = {name: f.contents() for name, f in fields.items() if not name.startswith("GGUF.")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value
    assert ours["t.str"] == "héllo" and ours["t.strs"] == ["a", "<think>", ""]


def test_only_the_wanted_keys_are_decoded(small_gguf: Path) -> None:
    assert read_metadata(small_gguf, {Keys.General.ARCHITECTURE, "t.u8"}) == {
        Keys.General.ARCHITECTURE: "llama",
        "t.u8": 7,
    }
    assert chat_templates(read_metadata(small_gguf, lambda k: "chat_template" in k)) == {
        "tool_use": "TOOLS",
        "default": TEMPLATE,
    }


@pytest.mark.parametrize("alignment", [None, 64])
def test_tensor_table_and_data_start_equal_gguf_pys(tmp_path: Path, alignment) -> None:
    path = _write(tmp_path / "t.gguf", alignment=alignment)
    header = read_header(path)
    reader = GGUFReader(path)
    assert header.alignment == reader.alignment
    assert tensor_types(path) == {t.name: t.tensor_type.name for t in reader.tensors}
    for t in reader.tensors:
        info = header.tensors[t.name]
        assert list(info.dims) == [int(d) for d in t.shape]
        assert header.data_start + info.offset == int(t.data_offset)
    np.testing.assert_array_equal(read_f32_tensor([path], "a.weight"), F32.ravel())
    assert read_f32_tensor([path], "missing.weight") is None
    with pytest.raises(TensorTypeError, match="b.weight is stored as F16"):
        read_f32_tensor([path], "b.weight")


def test_header_sizes_are_what_the_writer_writes(small_gguf: Path) -> None:
    """kv_bytes and tensor_info_bytes (the split planner's arithmetic) add up to the
    header gguf-py wrote: magic, version and counts, every entry, every tensor info."""
    reader = GGUFReader(small_gguf)
    total = 24
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        vtype = GGUFValueType(fld.types[0])
        if vtype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            counted = sum(int(part.nbytes) for part in fld.parts)
            if vtype == GGUFValueType.STRING:
                assert kv_bytes(name, vtype, str(fld.contents())) == counted
            total += counted
        else:
            assert kv_bytes(name, vtype) == sum(int(part.nbytes) for part in fld.parts)
            total += kv_bytes(name, vtype)
    total += sum(tensor_info_bytes(t.name, len(t.shape)) for t in reader.tensors)
    header = read_header(small_gguf)
    align = header.alignment
    assert header.data_start == (total + align - 1) // align * align


def test_not_a_gguf_is_the_same_error_everywhere(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    for read in (lambda p: read_metadata(p, set()), read_header, tensor_types):
        with pytest.raises(QuantkitError, match="is not a GGUF file"):
            read(bad)


def test_type_names_come_from_gguf_py() -> None:
    assert ggml_type_name(GGMLQuantizationType.Q4_K) == "Q4_K"
    assert ggml_type_name(9999) == "type 9999"


def test_keys_gguf_py_lacks_are_really_missing_there() -> None:
    """formats/gguf_keys.py defines only what gguf.Keys does not: if gguf-py adds one of
    these keys, take it from gguf.Keys and delete ours."""

    def values(cls) -> set[str]:
        out = set()
        for name, value in vars(cls).items():
            if isinstance(value, str) and not name.startswith("_"):
                out.add(value)
            elif isinstance(value, type):
                out |= values(value)
        return out

    known = values(gguf.Keys)
    ours = {v for k, v in vars(gguf_keys).items() if k.isupper() and isinstance(v, str)}
    assert ours and not ours & known


# --- hostile counts and lengths: refused against the file size, before any allocation ------


def _gguf_bytes(n_tensors: int, n_kv: int, body: bytes = b"") -> bytes:
    return struct.pack("<4sIQQ", b"GGUF", 3, n_tensors, n_kv) + body


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + payload


def _array(item: int, count: int, items: bytes = b"") -> bytes:
    return struct.pack("<IQ", item, count) + items


HOSTILE = {
    "tensor-count": (_gguf_bytes(2**62, 0, bytes(64)), "counts 0 key-value entries and "
                     f"{2**62} tensors, which need at least {2**62 * 24} bytes; the file has 88"),
    "kv-count": (_gguf_bytes(0, 2**40, bytes(64)), f"counts {2**40} key-value entries"),
    "string-length": (_gguf_bytes(0, 1, struct.pack("<Q", 2**63) + bytes(16)),
                      f"a string at byte 24 is {2**63} bytes long, past the end of the file"),
    "value-string-length": (
        _gguf_bytes(0, 1, _kv("k", GGUFValueType.STRING, struct.pack("<Q", 2**40) + b"x")),
        f"is {2**40} bytes long, past the end of the file",
    ),
    "scalar-array-count": (
        _gguf_bytes(0, 1, _kv("k", GGUFValueType.ARRAY, _array(GGUFValueType.UINT8, 2**62))),
        f"counts {2**62} items, which need at least {2**62} bytes",
    ),
    "string-array-count": (
        _gguf_bytes(0, 1, _kv("k", GGUFValueType.ARRAY, _array(GGUFValueType.STRING, 2**40))),
        f"counts {2**40} items, which need at least {2**43} bytes",
    ),
    "nested-arrays": (
        _gguf_bytes(0, 1, _kv("k", GGUFValueType.ARRAY, _array(GGUFValueType.ARRAY, 1)
                              + _array(GGUFValueType.UINT8, 0))),
        "holds arrays, which GGUF forbids",
    ),
    "dimensions": (
        _gguf_bytes(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<I", 2**31) + bytes(64)),
        f"tensor t has {2**31} dimensions; GGUF allows at most 4",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("decode", [True, False], ids=["decoded", "skipped"])
def test_hostile_counts_fail_before_anything_is_allocated(
    tmp_path: Path, case: str, decode: bool
) -> None:
    """A count or length the file cannot hold is refused when it is read (GGUFHeaderError,
    a ValueError, which the callers turn into one line naming the file), whether the value
    is decoded or skipped, and without allocating anything its size (the old reader built
    a struct format string of `count` characters for a scalar array)."""
    import tracemalloc

    from quantkit.formats.gguf_read import GGUFHeaderError

    data, expected = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFHeaderError) as info:
            read_header(path, (lambda key: True) if decode else frozenset())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expected in str(info.value)
    assert peak < 1 << 20


def test_a_hostile_gguf_is_a_one_line_artifact_error(tmp_path: Path) -> None:
    from quantkit.errors import ArtifactError
    from quantkit.inspection.gguf_meta import check_complete, read_gguf_meta

    path = tmp_path / "hostile.gguf"
    path.write_bytes(HOSTILE["scalar-array-count"][0])
    for read in (read_gguf_meta, lambda p: check_complete([p])):
        with pytest.raises(ArtifactError, match=f"{path} is corrupt: .*counts {2**62} items"):
            read(path)
