"""The probe files of measure_gains from two quantizations, whatever the number of roles.

A probe is the model with one role's tensors at their probe type and every other tensor at
Q8_0. llama.cpp quantizes each tensor on its own, so every probe's tensors are found in one
of two files: `base` (every tensor at Q8_0) and `low` (every tensor at its probe type).
Both are cut into llama.cpp's split format, one shard per role (the first shard holds the
metadata and the tensors no probe changes); a probe is then a folder of links to shards,
the probed role's from `low`, the rest from `base`. llama.cpp loads it as it loads any
split set, and its tensors are the bytes `quantize_gguf(bf16, ..., tensor_types=probe)`
would write (tests/backends/gguf/test_auto.py compares them). At 8B that is two
quantizations and ~13 GB copied instead of one 8.5 GB quantization per role.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ....formats.gguf_names import shard_name
from ....formats.gguf_read import tensor_types
from ....formats.gguf_split import write_groups
from ....planning.mix import tensor_role
from ..quantize import quantize_gguf

if TYPE_CHECKING:
    from ..imatrix.matrix import Imatrix

REFERENCE_TYPE = "Q8_0"  # every tensor not being probed; its own error is the baseline
STEM = "auto-probe"


@dataclass(frozen=True)
class ProbeSet:
    folder: Path
    roles: tuple[str, ...]  # shard k + 2 holds roles[k]'s tensors

    @property
    def count(self) -> int:
        return len(self.roles) + 1

    def probe(self, roles: set[str], name: str) -> Path:
        """A folder of links: `roles` from `low`, the rest from `base`; its first shard."""
        folder = self.folder / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for index in range(1, self.count + 1):
            low = index > 1 and self.roles[index - 2] in roles
            shard = shard_name(STEM, index, self.count)
            (folder / shard).symlink_to(self.folder / ("low" if low else "base") / shard)
        return folder / shard_name(STEM, 1, self.count)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def build_probe_set(
    bf16: Path, probe: dict[str, str], work: Path, imatrix: Imatrix | None
) -> ProbeSet:
    """Quantize `bf16` twice (every tensor at Q8_0; every tensor at its `probe` type) and cut
    both into one shard per probed role under work/auto-probe."""
    roles = tuple(sorted({tensor_role(n) for n, t in probe.items() if t != REFERENCE_TYPE}))
    probes = ProbeSet(work / STEM, roles)
    probes.remove()
    try:
        for kind, types in (("base", dict.fromkeys(probe, REFERENCE_TYPE)), ("low", probe)):
            whole = work / f"{STEM}-{kind}.gguf"
            try:
                quantize_gguf(bf16, whole, REFERENCE_TYPE, imatrix=imatrix, tensor_types=types)
                groups = _groups(list(tensor_types(whole)), roles)
                (probes.folder / kind).mkdir(parents=True)
                only = None if kind == "base" else set(range(2, probes.count + 1))
                write_groups(whole, groups, probes.folder / kind, STEM, only=only)
            finally:
                whole.unlink(missing_ok=True)
    except BaseException:
        probes.remove()
        raise
    return probes


def _groups(names: list[str], roles: tuple[str, ...]) -> list[list[str]]:
    """The first shard's tensors (no probed role), then one list per role, in file order."""
    rest = [n for n in names if tensor_role(n) not in roles]
    return [rest, *([n for n in names if tensor_role(n) == role] for role in roles)]
