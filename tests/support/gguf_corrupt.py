"""Corrupt copies of good GGUFs for the inspection's negative tests: in-place edits of
fixed-size fields (a token type, an id, same-length string bytes) on a copy, or a full
rewrite with gguf-py's GGUFWriter that drops metadata keys or tensors.

The files are read with the tests' own reader (tests/support/gguf_reader.py), not gguf-py's
GGUFReader, which takes ~10 s per read on a 128k-token vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from support.gguf_reader import HEADER_FIELDS, GGUFField, parse_gguf, read_gguf


class GGUFEdit:
    """A GGUF's bytes, open for in-place edits that keep every value's size.

    `fields` are the values as read before any edit: an edit does not change them."""

    def __init__(self, blob: bytearray) -> None:
        self.blob = blob
        self.fields = parse_gguf(blob).fields

    def overwrite(self, offset: int, data: bytes) -> None:
        self.blob[offset : offset + len(data)] = data

    def set_element(self, field: GGUFField, index: int, value: Any) -> None:
        """Element `index` of a numeric array (or, with index 0, a numeric scalar), stored
        in the field's own element type."""
        dtype = field.element_dtype()
        self.overwrite(field.offset + index * dtype.itemsize, np.array(value, dtype).tobytes())


def edited_copy(src: Path, dst: Path, edit: Callable[[GGUFEdit], None]) -> Path:
    """Write to `dst` a copy of `src` with `edit(GGUFEdit)` applied (src may be dst)."""
    gguf = GGUFEdit(bytearray(src.read_bytes()))
    edit(gguf)
    dst.write_bytes(gguf.blob)
    return dst


def token_index(gguf: GGUFEdit, text: str) -> int:
    return gguf.fields["tokenizer.ggml.tokens"].value.index(text)  # the first, as llama.cpp


def set_token_type(gguf: GGUFEdit, text: str, kind: int) -> None:
    gguf.set_element(gguf.fields["tokenizer.ggml.token_type"], token_index(gguf, text), kind)


def rename_token(gguf: GGUFEdit, old: str, new: str) -> None:
    assert len(old.encode()) == len(new.encode()), "in-place renames keep the length"
    tokens = gguf.fields["tokenizer.ggml.tokens"]
    gguf.overwrite(tokens.element_offsets[token_index(gguf, old)], new.encode())


def set_int(gguf: GGUFEdit, key: str, value: int) -> None:
    field = gguf.fields[key]
    assert len(field.types) == 1, f"{key} is not a scalar"
    gguf.set_element(field, 0, value)


def replace_in_string(gguf: GGUFEdit, key: str, old: str, new: str) -> None:
    assert len(old.encode()) == len(new.encode())
    text = gguf.fields[key].value
    assert isinstance(text, str) and old in text, (old, key)
    gguf.overwrite(gguf.fields[key].offset, text.replace(old, new, 1).encode())


def rewritten_copy(
    src: Path,
    dst: Path,
    *,
    drop_keys: frozenset[str] = frozenset(),
    drop_tensors: frozenset[str] = frozenset(),
    set_strings: dict[str, str] | None = None,
    add_tensors: dict | None = None,
) -> Path:
    """A new GGUF with the same content but for the dropped keys/tensors, replaced string
    values (any length) and added tensors (name -> numpy array, stored in its dtype)."""
    from gguf import GGUFValueType, GGUFWriter

    original = read_gguf(src)
    writer = GGUFWriter(dst, str(original.metadata["general.architecture"]))
    set_strings = set_strings or {}
    for name, fld in original.fields.items():
        if name in HEADER_FIELDS or name == "general.architecture" or name in drop_keys:
            continue
        main = fld.types[0]
        sub = fld.types[-1] if main == GGUFValueType.ARRAY else None
        value = set_strings.get(name, fld.contents())
        writer.add_key_value(name, value, main, sub_type=sub)
    for key, value in set_strings.items():
        if key not in original.fields:
            writer.add_string(key, value)
    for tensor in original.tensors.values():
        if tensor.name in drop_tensors:
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    for name, array in (add_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
