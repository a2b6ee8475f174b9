"""Pickled checkpoints (`pytorch_model*.bin`), read only when the user passes
--allow-pickle: converted once into a safetensors copy that the rest of quantkit reads.

torch.load runs with weights_only=True, which refuses arbitrary objects; even so, pickles
are a code-execution risk, which is why this path is opt-in.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from ..disk.atomic import building_folder
from ..disk.cache import cache_dir
from ..disk.lock import exclusive
from ..errors import SourceModelError, require
from .tokenizer_bundle import TOKENIZER_FILES

log = logging.getLogger(__name__)


def safetensors_copy(folder: Path) -> Path:
    """A folder beside the cache with the same config/tokenizer files and the weights as
    safetensors, one shard per pickle file; reused when already complete."""

    pickles = sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("*.bin"))
    if not pickles:
        raise SourceModelError(f"{folder} has neither safetensors nor .bin weights.")
    target = cache_dir("from-pickle", content_hash_of_files(pickles)[:16])
    if (target / ".complete").is_file():
        return target
    # An incomplete copy (no .complete) is replaced; the marker is written last inside the
    # .partial folder, so a finished-looking copy is always a whole one. A second process
    # converting the same pickles waits for the first one's copy.
    with exclusive(target):
        if (target / ".complete").is_file():
            return target
        with building_folder(target) as work:
            for name in ("config.json", *TOKENIZER_FILES):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, work / name)
            for index, pickle_file in enumerate(pickles, start=1):
                shard = work / f"model-{index:05d}-of-{len(pickles):05d}.safetensors"
                _convert_one(pickle_file, shard)
            (work / ".complete").write_text("ok\n")
    return target


def _convert_one(pickle_file: Path, out: Path) -> None:
    torch = require("torch", "torch")
    from safetensors.torch import save_file

    log.warning("Reading pickled weights %s (opted in with --allow-pickle)", pickle_file.name)
    try:
        state = torch.load(pickle_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError for bad files
        raise SourceModelError(
            f"{pickle_file} cannot be read as a weights-only PyTorch checkpoint ({exc}).",
            hint="Download the file again, or convert it to safetensors where it was made.",
        ) from exc
    # safetensors refuses tensors that share memory (tied weights); store them separately.
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(out))


def content_hash_of_files(paths: list[Path]) -> str:
    """sha256 over names, sizes and modification times: enough to tell a re-download."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
