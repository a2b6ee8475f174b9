"""Corrupt copies of good GGUFs for the inspection's negative tests: in-place edits of
fixed-size fields (a token type, an id, same-length string bytes) on a copy, or a full
rewrite with gguf-py (GGUFReader -> GGUFWriter) that drops metadata keys or tensors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def edited_copy(src: Path, dst: Path, edit: Callable) -> Path:
    """Copy `src` to `dst` and run `edit(fields)` on a writable GGUFReader of the copy."""
    from gguf import GGUFReader

    shutil.copyfile(src, dst)
    reader = GGUFReader(dst, "r+")
    edit(reader.fields)
    reader.data.flush()
    _release(reader)
    return dst


def _release(reader) -> None:
    """GGUFReader has no close(): drop its memmap and every view of it, then collect, so
    the file is no longer mapped when the test goes on."""
    import gc

    reader.fields.clear()
    reader.tensors.clear()
    del reader.data
    gc.collect()


def token_index(fields, text: str) -> int:
    tokens = fields["tokenizer.ggml.tokens"]
    for i, part_index in enumerate(tokens.data):
        if bytes(tokens.parts[part_index]).decode("utf-8") == text:
            return i
    raise KeyError(text)


def set_token_type(fields, text: str, kind: int) -> None:
    types = fields["tokenizer.ggml.token_type"]
    types.parts[types.data[token_index(fields, text)]][0] = kind


def rename_token(fields, old: str, new: str) -> None:
    assert len(old.encode()) == len(new.encode()), "in-place renames keep the length"
    tokens = fields["tokenizer.ggml.tokens"]
    part = tokens.parts[tokens.data[token_index(fields, old)]]
    part[:] = list(new.encode())


def set_int(fields, key: str, value: int) -> None:
    fields[key].parts[-1][0] = value


def replace_in_string(fields, key: str, old: str, new: str) -> None:
    assert len(old.encode()) == len(new.encode())
    part = fields[key].parts[-1]
    text = bytes(part).decode("utf-8")
    assert old in text, (old, key)
    part[:] = list(text.replace(old, new, 1).encode())


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
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(dst, arch)
    set_strings = set_strings or {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        main = GGUFValueType(fld.types[0])
        sub = GGUFValueType(fld.types[-1]) if main == GGUFValueType.ARRAY else None
        value = set_strings.get(name, fld.contents())
        writer.add_key_value(name, value, main, sub_type=sub)
    for key, value in set_strings.items():
        if key not in reader.fields:
            writer.add_string(key, value)
    for tensor in reader.tensors:
        if tensor.name in drop_tensors:
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    for name, array in (add_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    del writer
    _release(reader)
    return dst
