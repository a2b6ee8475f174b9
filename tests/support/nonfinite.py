"""Damaged copies of real fixture models: one tensor of model.safetensors given a NaN and an
infinity, rewritten with the safetensors library; every other tensor, the metadata and the
other files stay as they are."""

from __future__ import annotations

import shutil
from pathlib import Path

WEIGHTS = "model.safetensors"


def nonfinite_copy(model: Path, dest: Path, tensor: str) -> Path:
    """Copy the single-shard model folder `model` to `dest` with a NaN at the first element
    of `tensor` and -inf at its last. Returns `dest`."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(model, dest, ignore=shutil.ignore_patterns(WEIGHTS))
    with safe_open(str(model / WEIGHTS), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    damaged = tensors[tensor].clone()
    damaged.view(-1)[0] = float("nan")
    damaged.view(-1)[-1] = float("-inf")
    assert int(torch.isnan(damaged).sum()) == 1 and int(torch.isinf(damaged).sum()) == 1
    tensors[tensor] = damaged
    save_file(tensors, str(dest / WEIGHTS), metadata=metadata)
    return dest
