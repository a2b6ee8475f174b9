"""Reading a GGUF artifact without the runtime: which files make it (a single file or a
split set), the tokenizer and template metadata as stored, and whether every shard is whole.

The metadata is read with quantkit's fast reader (quantkit/formats/gguf_read.py): gguf-py's
GGUFReader decodes every entry, which takes seconds for a 128k-token vocabulary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys

from ..errors import ArtifactError
from ..formats.gguf_names import parse_shard_name
from ..formats.gguf_read import chat_templates, read_header, read_metadata
from ..formats.gguf_split import SPLIT_PREFIX

_TOKENIZER_PREFIX = Keys.Tokenizer.MODEL.split(".")[0] + "."  # "tokenizer."
_SPECIAL_ID = {  # special_id's roles -> llama.cpp's key
    "bos": Keys.Tokenizer.BOS_ID,
    "eos": Keys.Tokenizer.EOS_ID,
    "eot": Keys.Tokenizer.EOT_ID,
    "eom": Keys.Tokenizer.EOM_ID,
    "unknown": Keys.Tokenizer.UNK_ID,
    "padding": Keys.Tokenizer.PAD_ID,
    "seperator": Keys.Tokenizer.SEP_ID,  # sic: llama.cpp's spelling
    "mask": Keys.Tokenizer.MASK_ID,
}


def gguf_files(path: Path) -> list[Path]:
    """The files of a GGUF artifact, first shard first: `path` itself, or every shard of
    the split set `path` belongs to (any shard may be named)."""
    shard = parse_shard_name(path.name)
    if shard is None:
        return [path]
    shards = shard.siblings(path.parent)
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise ArtifactError(
            f"The split GGUF set {shard.stem} is incomplete: {', '.join(missing)} missing.",
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
        return str(self.values.get(Keys.General.ARCHITECTURE, ""))

    @property
    def tokens(self) -> list[str]:
        return list(self.values.get(Keys.Tokenizer.LIST) or [])

    @property
    def token_types(self) -> list[int]:
        return list(self.values.get(Keys.Tokenizer.TOKEN_TYPE) or [])

    def special_id(self, role: str) -> int | None:
        value = self.values.get(_SPECIAL_ID[role])
        return int(value) if isinstance(value, int) else None

    @property
    def templates(self) -> dict[str, str]:
        """Chat templates as stored: "default" and every named `tokenizer.chat_template.X`."""
        return chat_templates(self.values)

    def arch_value(self, suffix: str) -> Any:
        return self.values.get(f"{self.arch}.{suffix}")


def check_is_model(path: Path) -> None:
    """A GGUF that holds something other than a model (llama-imatrix's and quantkit's
    importance matrices are GGUF files with `general.type = "imatrix"`) is refused with
    what it is, not as a corrupt model."""
    try:
        kind = read_metadata(path, {Keys.General.TYPE}).get(Keys.General.TYPE)
    except Exception:  # noqa: BLE001 - an unreadable header is check_complete's to report
        return
    if kind == "imatrix":
        raise ArtifactError(
            f"{path} is an importance matrix (general.type = imatrix), not a model.",
            hint="Inspect the model GGUF beside it; use this file with "
            "`quantkit convert --imatrix FILE` or `llama-quantize --imatrix`.",
        )


def read_gguf_meta(first_shard: Path) -> GGUFMeta:
    def wanted(key: str) -> bool:
        return key != Keys.Tokenizer.MERGES and (
            key.startswith((_TOKENIZER_PREFIX, Keys.General.ARCHITECTURE, SPLIT_PREFIX))
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


def check_complete(files: list[Path]) -> None:
    """Every shard is as long as its tensor table says: a download cut short loads
    vocab-only without complaint, so the inspection would pass a file that cannot run."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for path in files:
        try:
            header = read_header(path)
            size = path.stat().st_size
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"{path} is corrupt: its header cannot be read ({exc}).",
                hint="Download or convert it again.",
            ) from exc
        needed = header.data_start
        for info in header.tensors.values():
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
            except (KeyError, ValueError):
                continue  # a type this gguf-py does not know: llama.cpp will say
            needed = max(
                needed, header.data_start + info.offset + info.elements // block * type_size
            )
        if size < needed:
            raise ArtifactError(
                f"{path} is truncated: {size:,} bytes, its tensors need {needed:,}.",
                hint="The download or conversion was cut short; fetch or convert it again.",
            )
