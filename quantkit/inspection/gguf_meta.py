"""Reading a GGUF artifact without the runtime: which files make it (a single file or a
split set), the tokenizer and template metadata as stored, and one tensor's values.

The metadata is read with quantkit's fast reader (quantkit/gguf_split.py): gguf-py's
GGUFReader decodes every entry, which takes seconds for a 128k-token vocabulary.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
TEMPLATE_KEY = "tokenizer.chat_template"


def gguf_files(path: Path) -> list[Path]:
    """The files of a GGUF artifact, first shard first: `path` itself, or every shard of
    the split set `path` belongs to (any shard may be named)."""
    match = _SHARD.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    shards = [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in
              range(1, count + 1)]  # fmt: skip
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise ArtifactError(
            f"The split GGUF set {match['stem']} is incomplete: {', '.join(missing)} missing.",
            hint="Download every shard into the same folder.",
        )
    return shards


def check_gguf_magic(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror}).") from exc
    if head[:4] != b"GGUF" or len(head) < 8:
        raise ArtifactError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic).",
            hint="Pass a .gguf file, the first shard of a split set, or a safetensors folder.",
        )


@dataclass(frozen=True)
class GGUFMeta:
    values: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.values.get("general.architecture", ""))

    @property
    def tokens(self) -> list[str]:
        return list(self.values.get("tokenizer.ggml.tokens") or [])

    @property
    def token_types(self) -> list[int]:
        return list(self.values.get("tokenizer.ggml.token_type") or [])

    def special_id(self, role: str) -> int | None:
        value = self.values.get(f"tokenizer.ggml.{role}_token_id")
        return int(value) if isinstance(value, int) else None

    @property
    def templates(self) -> dict[str, str]:
        """Chat templates as stored: "default" and every named `tokenizer.chat_template.X`."""
        out = {
            key[len(TEMPLATE_KEY) + 1 :]: str(value)
            for key, value in self.values.items()
            if key.startswith(TEMPLATE_KEY + ".")
        }
        if TEMPLATE_KEY in self.values:
            out["default"] = str(self.values[TEMPLATE_KEY])
        return out

    def arch_value(self, suffix: str) -> Any:
        return self.values.get(f"{self.arch}.{suffix}")


def check_is_model(path: Path) -> None:
    """A GGUF that holds something other than a model (llama-imatrix's and quantkit's
    importance matrices are GGUF files with `general.type = "imatrix"`) is refused with
    what it is, not as a corrupt model."""
    from ..gguf_split import read_metadata

    try:
        kind = read_metadata(path, {"general.type"}).get("general.type")
    except Exception:  # noqa: BLE001 - an unreadable header is check_complete's to report
        return
    if kind == "imatrix":
        raise ArtifactError(
            f"{path} is an importance matrix (general.type = imatrix), not a model.",
            hint="Inspect the model GGUF beside it; use this file with "
            "`quantkit convert --imatrix FILE` or `llama-quantize --imatrix`.",
        )


def read_gguf_meta(first_shard: Path) -> GGUFMeta:
    from ..gguf_split import read_metadata

    def wanted(key: str) -> bool:
        return key != "tokenizer.ggml.merges" and (
            key.startswith(("tokenizer.", "general.architecture", "split."))
            or ".rope." in key
            or key.endswith((".context_length", ".attention.key_length"))
        )

    try:
        return GGUFMeta(read_metadata(first_shard, wanted))
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{first_shard} is corrupt: its metadata cannot be read ({exc}).",
            hint="Download or convert it again.",
        ) from exc


class TensorTypeError(ValueError):
    """A tensor stored in another type than the one llama.cpp requires for it."""


_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_F32 = 0  # ggml type id


def read_f32_tensor(files: list[Path], name: str):
    """The float32 tensor `name` from whichever shard holds it, or None if absent;
    TensorTypeError when it is stored in another type."""
    import numpy as np

    for path in files:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            infos, data_start = _tensor_infos(buf)
            if name not in infos:
                continue
            dims, ggml_type, offset = infos[name]
            if ggml_type != _F32:
                raise TensorTypeError(
                    f"{name} is stored as {_type_name(ggml_type)} (ggml type {ggml_type}), not F32"
                )
            count = int(np.prod(dims)) if dims else 1
            view = np.frombuffer(buf, dtype="<f4", count=count, offset=data_start + offset)
            values = view.copy()
            del view  # release the buffer before the mmap closes
            return values
    return None


def _type_name(ggml_type: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def check_complete(files: list[Path]) -> None:
    """Every shard is as long as its tensor table says: a download cut short loads
    vocab-only without complaint, so the inspection would pass a file that cannot run."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for path in files:
        try:
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                infos, data_start = _tensor_infos(buf)
                size = len(buf)
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"{path} is corrupt: its header cannot be read ({exc}).",
                hint="Download or convert it again.",
            ) from exc
        needed = data_start
        for dims, ggml_type, offset in infos.values():
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (KeyError, ValueError):
                continue  # a type this gguf-py does not know: llama.cpp will say
            count = 1
            for d in dims:
                count *= d
            needed = max(needed, data_start + offset + count // block * type_size)
        if size < needed:
            raise ArtifactError(
                f"{path} is truncated: {size:,} bytes, its tensors need {needed:,}.",
                hint="The download or conversion was cut short; fetch or convert it again.",
            )


def _tensor_infos(buf) -> tuple[dict[str, tuple[list[int], int, int]], int]:
    """name -> (dims, ggml type, offset from the data start), and the data start."""
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, pos)
    pos += 16
    alignment = 32

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8 : at + 8 + length]).decode("utf-8", "replace"), at + 8 + length

    def skip(vtype: int, at: int) -> int:
        if vtype == 8:
            return string(at)[1]
        if vtype == 9:
            item, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item in _SIZES:
                return at + _SIZES[item] * count
            for _ in range(count):
                at = skip(item, at)
            return at
        return at + _SIZES[vtype]

    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        if key == "general.alignment" and vtype == 4:
            (alignment,) = struct.unpack_from("<I", buf, pos + 4)
        pos = skip(vtype, pos + 4)
    infos = {}
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        infos[name] = (dims, ggml_type, offset)
    return infos, (pos + alignment - 1) // alignment * alignment
