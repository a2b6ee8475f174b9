"""The one cache folder: `QUANTKIT_CACHE`, else `~/.cache/quantkit`.

Reference logits, file hashes, the inspection's source answers and the safetensors copies of
pickled checkpoints all live under it; tests point it at a private folder through the
environment, so it is read at every call, never once at import."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "QUANTKIT_CACHE"
DEFAULT = "~/.cache/quantkit"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or `parts` below it); not created here: writers create what they
    write, so a read-only run leaves nothing behind."""
    return Path(os.environ.get(ENV_VAR, DEFAULT)).expanduser().joinpath(*parts)
