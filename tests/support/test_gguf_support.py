"""The tests' own GGUF reader, comparator and corrupter, held to gguf-py's GGUFReader on a
small file with every value type: they stand in for it because it takes ~10 s per read
on a 128k-token vocabulary, so they must see exactly what it sees."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from support.gguf_compare import compare_gguf
from support.gguf_corrupt import (
    edited_copy,
    rename_token,
    replace_in_string,
    rewritten_copy,
    set_int,
    set_token_type,
)
from support.gguf_reader import read_gguf

TOKENS = ["<unk>", "a", "é", "<think>", "", "日本", "</think>", "b"]


def write_small_gguf(path: Path, **changes) -> Path:
    """A GGUF with a value of every type and tensors of several types and ranks;
    `changes` replaces metadata values (None drops the key) and, under "tensors", the
    tensor list (name -> (array, raw type or None))."""
    kv = {
        "general.name": (V.STRING, "small"), "x.u8": (V.UINT8, 200), "x.i8": (V.INT8, -3),
        "x.u16": (V.UINT16, 60000), "x.i16": (V.INT16, -300), "x.u32": (V.UINT32, 7),
        "x.i32": (V.INT32, -7), "x.f32": (V.FLOAT32, 0.5), "x.u64": (V.UINT64, 2**40),
        "x.i64": (V.INT64, -(2**40)), "x.f64": (V.FLOAT64, 0.25), "x.bool": (V.BOOL, True),
        "tokenizer.ggml.tokens": (V.ARRAY, TOKENS, V.STRING),
        "tokenizer.ggml.token_type": (V.ARRAY, [2, 1, 1, 4, 1, 1, 4, 1], V.INT32),
        "tokenizer.ggml.scores": (V.ARRAY, [float(i) / 3 for i in range(8)], V.FLOAT32),
        "x.bools": (V.ARRAY, [True, False], V.BOOL),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 6),
        "tokenizer.chat_template": (V.STRING, "{{ messages }}<think>"),
    }  # fmt: skip
    tensors = changes.pop("tensors", None) or default_tensors()
    for key, value in changes.items():
        if value is None:
            kv.pop(key)
        else:
            kv[key] = value
    writer = gguf.GGUFWriter(path, "llama")
    for key, (vtype, value, *sub) in kv.items():
        writer.add_key_value(key, value, vtype, sub_type=sub[0] if sub else None)
    for name, (array, raw_type) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def default_tensors() -> dict[str, tuple[np.ndarray, Q | None]]:
    rng = np.random.default_rng(0)  # the same values on every call
    weights = rng.standard_normal((4, 64)).astype(np.float32)
    return {
        "a.weight": (weights, None),
        "b.weight": (rng.standard_normal(16).astype(np.float16), None),
        "c.weight": (gguf.quantize(weights, Q.Q8_0), Q.Q8_0),
        "d.weight": (gguf.quantize(weights, Q.BF16), Q.BF16),
        "e.weight": (np.arange(12, dtype=np.int32).reshape(3, 4), None),
        "f.weight": (gguf.quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), Q.Q8_0),
                     Q.Q8_0),
    }  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_gguf(tmp_path_factory.mktemp("small") / "small.gguf")


def _file_offset(reader: gguf.GGUFReader, part: np.ndarray) -> int:
    return int(part.ctypes.data - reader.data.ctypes.data)


def test_reader_sees_what_gguf_reader_sees(small: Path) -> None:
    theirs, ours = gguf.GGUFReader(small), read_gguf(small)
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        mine = ours.fields[key]
        assert list(mine.types) == field.types, key
        assert mine.contents() == field.contents(), key
        assert type(mine.contents()) is type(field.contents()), key
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for tensor in theirs.tensors:
        mine = ours.tensors[tensor.name]
        assert mine.shape == tuple(reversed(tensor.shape.tolist())), tensor.name
        assert mine.tensor_type == tensor.tensor_type and mine.n_bytes == tensor.n_bytes
        assert mine.data.dtype == tensor.data.dtype and mine.data.shape == tensor.data.shape
        assert mine.data.tobytes() == tensor.data.tobytes(), tensor.name


def test_reader_offsets_are_where_gguf_reader_finds_the_values(small: Path) -> None:
    theirs, ours = gguf.GGUFReader(small), read_gguf(small)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        mine = ours.fields[key]
        # A string array's offset is its first element's length; GGUFReader points past it.
        offset = mine.element_offsets[0] if mine.element_offsets else mine.offset
        assert offset == _file_offset(theirs, field.parts[field.data[0]]), key
    blob = small.read_bytes()
    for key, field in theirs.fields.items():
        start, end = ours.fields[key].span
        assert blob[start:end] == b"".join(p.tobytes() for p in field.parts), key
    tokens = theirs.fields["tokenizer.ggml.tokens"]
    # Each text follows its 8-byte length (an empty text's view has no address of its own).
    assert ours.fields["tokenizer.ggml.tokens"].element_offsets == tuple(
        _file_offset(theirs, tokens.parts[i - 1]) + 8 for i in tokens.data
    )


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (b"GGUF", b"GGUX", ValueError),  # magic
        (b"x.u16", b"x.u32", KeyError),  # the same key twice
        (b"b.weight", b"a.weight", ValueError),  # the same tensor twice
    ],
)
def test_reader_refuses_what_gguf_reader_refuses(
    small: Path, tmp_path: Path, old: bytes, new: bytes, error: type
) -> None:
    blob = small.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(blob.replace(old, new, 1))
    for read in (gguf.GGUFReader, read_gguf):
        with pytest.raises(error):
            read(broken)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(blob[:-40])  # past the last tensor's padding, into its data
    for read in (gguf.GGUFReader, read_gguf):
        with pytest.raises(ValueError):
            read(truncated)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"x.u32": (V.INT32, 7)}, [("x.u32", "value_type")]),
        ({"x.u32": (V.UINT32, 8)}, [("x.u32", "value")]),
        ({"x.f32": (V.FLOAT32, 0.75)}, [("x.f32", "value")]),
        ({"x.bool": (V.BOOL, False)}, [("x.bool", "value")]),
        ({"general.name": (V.STRING, "smalL")}, [("general.name", "value")]),
        ({"x.u8": None}, [("x.u8", "missing_in_ours")]),
        ({"x.new": (V.UINT8, 1)}, [("x.new", "missing_in_theirs")]),  # kv_count: not again
        (
            {"tokenizer.ggml.token_type": (V.ARRAY, [2, 1, 1, 4, 1, 1, 4, 1], V.UINT32)},
            [("tokenizer.ggml.token_type", "value_type")],
        ),
        (
            {"tokenizer.ggml.token_type": (V.ARRAY, [2, 1, 1, 3, 1, 1, 4, 1], V.INT32)},
            [("tokenizer.ggml.token_type", "element")],
        ),
        (
            {"tokenizer.ggml.tokens": (V.ARRAY, TOKENS[:-1], V.STRING)},
            [("tokenizer.ggml.tokens", "length")],
        ),
        (
            {"tokenizer.ggml.scores": (V.ARRAY, [0.0] * 8, V.FLOAT32)},
            [("tokenizer.ggml.scores", "element")] * 7,
        ),
    ],
)
def test_compare_finds_each_metadata_difference(
    tmp_path: Path, small: Path, changes: dict, expected: list
) -> None:
    other = write_small_gguf(tmp_path / "o.gguf", **changes)
    assert [(d.key, d.aspect) for d in compare_gguf(other, small)] == expected


def test_compare_names_a_token_type_difference_by_its_token(tmp_path: Path, small: Path) -> None:
    types = (V.ARRAY, [2, 1, 1, 3, 1, 1, 4, 1], V.INT32)
    other = write_small_gguf(tmp_path / "o.gguf", **{"tokenizer.ggml.token_type": types})
    (diff,) = compare_gguf(other, small)
    assert (diff.index, diff.note, diff.ours, diff.theirs) == (3, "<think>", 3, 4)


def test_compare_finds_each_tensor_difference(tmp_path: Path, small: Path) -> None:
    def aspects(tensors: dict) -> list[tuple[str, str]]:
        other = write_small_gguf(tmp_path / "o.gguf", tensors=tensors)
        return [(d.key, d.aspect) for d in compare_gguf(other, small) if d.kind == "tensor"]

    base = default_tensors()
    assert aspects(base) == []
    assert aspects(dict(reversed(base.items()))) == [("*", "order")]
    assert aspects({k: v for k, v in base.items() if k != "b.weight"}) == [
        ("b.weight", "missing_in_ours")
    ]
    changed = dict(base, **{"a.weight": (base["a.weight"][0] + 1, None)})
    assert aspects(changed) == [("a.weight", "data")]
    retyped = dict(base, **{"a.weight": (base["a.weight"][0].astype(np.float16), None)})
    assert aspects(retyped) == [("a.weight", "type")]
    reshaped = dict(base, **{"a.weight": (base["a.weight"][0].reshape(8, 32), None)})
    assert aspects(reshaped) == [("a.weight", "shape")]
    quant = dict(base, **{"c.weight": (base["c.weight"][0] ^ np.uint8(1), Q.Q8_0)})
    assert aspects(quant) == [("c.weight", "data")]


def _edit_with_gguf_reader(src: Path, dst: Path, edit) -> Path:
    """The edits as GGUFReader in r+ mode makes them: the reference for edited_copy."""
    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    edit(reader.fields)
    reader.data.flush()
    del reader
    return dst


def _gguf_reader_token(fields, text: str) -> int:
    tokens = fields["tokenizer.ggml.tokens"]
    return [bytes(tokens.parts[i]).decode() for i in tokens.data].index(text)


def test_edits_write_the_bytes_gguf_reader_would(small: Path, tmp_path: Path) -> None:
    def by_gguf_reader(fields) -> None:
        types = fields["tokenizer.ggml.token_type"]
        types.parts[types.data[_gguf_reader_token(fields, "<think>")]][0] = 3
        tokens = fields["tokenizer.ggml.tokens"]
        tokens.parts[tokens.data[_gguf_reader_token(fields, "</think>")]][:] = list(b"</thonk>")
        fields["tokenizer.ggml.eos_token_id"].parts[-1][0] = 1
        fields["tokenizer.chat_template"].parts[-1][:] = list(b"{{ messages }}<thonk>")

    def by_ours(fields) -> None:
        set_token_type(fields, "<think>", 3)
        rename_token(fields, "</think>", "</thonk>")
        set_int(fields, "tokenizer.ggml.eos_token_id", 1)
        replace_in_string(fields, "tokenizer.chat_template", "<think>", "<thonk>")

    reference = _edit_with_gguf_reader(small, tmp_path / "ref.gguf", by_gguf_reader)
    ours = edited_copy(small, tmp_path / "ours.gguf", by_ours)
    assert ours.read_bytes() == reference.read_bytes() != small.read_bytes()


def test_rewritten_copy_keeps_everything_it_is_not_told_to_change(
    small: Path, tmp_path: Path
) -> None:
    same = rewritten_copy(small, tmp_path / "same.gguf")
    assert compare_gguf(same, small) == []
    changed = rewritten_copy(
        small, tmp_path / "changed.gguf", drop_keys=frozenset({"x.u8"}),
        drop_tensors=frozenset({"b.weight"}), set_strings={"general.name": "a longer name"},
        add_tensors={"g.weight": np.ones(32, np.float16)},
    )  # fmt: skip
    found = {(d.key, d.aspect) for d in compare_gguf(changed, small)}
    assert found == {
        ("x.u8", "missing_in_ours"), ("general.name", "value"),
        ("b.weight", "missing_in_ours"), ("g.weight", "missing_in_theirs"),
    }  # fmt: skip
