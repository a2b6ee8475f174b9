"""The byte budget `--quant auto` fills: from --max-size, from --bpw, or from what a
hardware profile holds at the requested context.

A budget counts either the whole file ("file": --max-size, --bpw, CPU-only and unified
memory profiles) or what llama.cpp puts on the GPU ("gpu": GPU profiles). llama.cpp keeps
the input embeddings in system RAM whatever n_gpu_layers is (quantkit.planning.memory's
GGUFLayout), so on a GPU profile they do not compete with the layers for VRAM; a head tied
to the embeddings is copied to the GPU and does count.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import PlanError
from ..formats.gguf_types import numel
from . import memory as mem
from .model_spec import ModelSpec
from .profiles import HardwareProfile

FILE, GPU = "file", "gpu"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}  # fmt: skip


@dataclass(frozen=True)
class Budget:
    bytes: int  # the most the counted tensors (and, for "file", the header) may take
    scope: str  # FILE or GPU
    origin: str  # what set it, for the plan, the recipe and the card

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def counts(self, role: str, tied_head: bool) -> bool:
        """Whether a tensor of `role` takes room in this budget."""
        return self.scope == FILE or role != "token_embd" or tied_head


def choose_budget(
    spec: ModelSpec,
    profile: HardwareProfile | None,
    context: int,
    *,
    max_size: str | None = None,
    bpw: float | None = None,
) -> Budget:
    """--max-size, else --bpw, else what `profile` holds at `context`."""
    check_budget_flags(max_size, bpw, profile is not None)
    if max_size is not None:
        return budget_from_size(max_size)
    if bpw is not None:
        return budget_from_bpw(spec, bpw)
    assert profile is not None
    return budget_for_profile(spec, profile, context)


def check_budget_flags(max_size: str | None, bpw: float | None, has_profile: bool) -> None:
    """One budget, and one at all: the flags alone, before anything is read."""
    if max_size is not None and bpw is not None:
        raise PlanError("Give one budget: --max-size or --bpw, not both.")
    if max_size is None and bpw is None and not has_profile:
        raise PlanError(
            "--quant auto needs a budget to fill.",
            hint="Pass --profile NAME (what its devices hold), --max-size 20GB, --bpw 4.5, "
            "or --recipe FILE.",
        )


def parse_size(text: str) -> int:
    """'20GB', '20 GiB', '4.5G', '900MB', '123456' -> bytes (GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(text)
    if not match:
        raise PlanError(
            f"Cannot read the size {text!r}.", hint="Write it like 20GB, 19.5GiB or 900MB."
        )
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _UNITS[unit])


def budget_from_size(text: str) -> Budget:
    return Budget(parse_size(text), FILE, f"--max-size {text}")


def budget_from_bpw(spec: ModelSpec, bpw: float) -> Budget:
    """`bpw` bits for every weight of the GGUF (norms and rope factors included), as
    llama-quantize counts BPW, plus the header of the BF16 file's metadata."""
    if not 1.0 <= bpw <= 16.0:
        raise PlanError(f"--bpw {bpw} is outside 1 to 16 bits per weight.")
    elements = sum(numel(t.shape) for t in mem.gguf_tensors(spec, "BF16"))
    header = mem.gguf_file_bytes(spec, "BF16") - mem.gguf_weights_bytes(spec, "BF16")
    return Budget(int(elements * bpw / 8) + header, FILE, f"--bpw {bpw:g}")


def budget_for_profile(spec: ModelSpec, profile: HardwareProfile, context: int) -> Budget:
    """What `profile`'s devices hold for weights at `context`: the device memory less the
    KV cache of every layer, llama.cpp's compute buffers and (GPU) the CUDA context."""
    g = spec.geometry
    kv = mem.kv_cache_bytes(g, mem.llama_cpp_kv_cells(context), profile.kv_cache_type)
    compute = mem.llama_cpp_compute_bytes(g, context, with_output=True)
    origin = f"profile {profile.name} at context {context}"
    if profile.kind == "gpu":
        devices = profile.devices_per_node
        room = (profile.usable_bytes - mem.CUDA_CONTEXT_BYTES - compute) * devices - kv
        return Budget(max(room, 0), GPU, origin)
    room = profile.usable_bytes - kv - compute - mem.llama_cpp_output_bytes(g)
    return Budget(max(room, 0), FILE, origin)
