"""llama.cpp's names for the shards of a split GGUF: `<stem>-00001-of-00003.gguf`, 1-based.
Light on purpose (no gguf-py): finding an artifact in a folder needs only the names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_name(stem: str, index: int, count: int) -> str:
    """llama.cpp's shard name: index is 1-based."""
    return f"{stem}-{index:05d}-of-{count:05d}.gguf"


@dataclass(frozen=True)
class ShardName:
    stem: str
    index: int  # 1-based, as in the name
    count: int

    def siblings(self, folder: Path) -> list[Path]:
        """Every shard of the set, first first."""
        return [folder / shard_name(self.stem, i, self.count) for i in range(1, self.count + 1)]


def parse_shard_name(name: str) -> ShardName | None:
    """`<stem>-00002-of-00003.gguf` -> ShardName(stem, 2, 3); None for other names."""
    match = _SHARD_NAME.match(name)
    if match is None:
        return None
    return ShardName(match["stem"], int(match["no"]), int(match["count"]))


def is_shard_name(name: str) -> bool:
    return parse_shard_name(name) is not None
