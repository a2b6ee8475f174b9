"""Compute an importance matrix from the source's own weights, one decoder layer at a time.

What is collected is what llama-imatrix collects (compute.py, docs/formats.md): for every
matrix product of a `blk.*` weight, the sum of the squared input activations per input
column and the number of rows (tokens), on the same 512-token calibration chunks. Here the
products are the `nn.Linear` modules of the decoder layers, run by the layer-by-layer
transformers model the evaluation uses for the source's reference logits
(source.streamed_model: each layer read from the shards, run on every chunk of a batch,
dropped), in the dtype that evaluation computes in (runtime.cpu.eval_dtype). A forward
pre-hook on each Linear sees its input; the GGUF names come from gguf-py's tensor-name map,
as the GGUF writer's do.

Why not llama.cpp on a GGUF of the model (compute.py, as llama-imatrix): that needs the
model written once more (a Q8_0 file, half the source's bytes) before the first weight is
quantized, and llama.cpp's Q8_0 prompt processing is slow on these CPUs. On the 8B shape it
took 47 s to write and 247 s to run (the first chunk with the load, then 185 s), against
105-114 s here (docs/benchmarks.md, sessions 15 and 16). The matrices differ by rounding:
docs/formats.md gives the measured difference from llama.cpp's on the BF16 file, and from
the Q8_0 one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ....errors import ImatrixError, require
from .compute import ImatrixData
from .matrix import Imatrix, ImatrixEntry

if TYPE_CHECKING:
    from ....source.model import SourceModel

log = logging.getLogger(__name__)


def compute_imatrix_from_source(
    source: SourceModel,
    data: ImatrixData,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """The importance matrix of `source` on `data`'s chunks; `progress(done, total)` after
    each decoder layer of each batch."""
    torch = require("torch", "torch")
    from ....runtime.cpu import eval_dtype
    from ....source.streamed_model import open_streamed

    dtype = eval_dtype(source.parameter_count)
    streamed = open_streamed(source.path, dtype)
    try:
        layers = streamed.layers
        collector = _Collector(torch)
        collector.attach(layers, _gguf_names(source, layers))
        batch = streamed.chunks_per_batch(data.chunk_size)
        batches = -(-len(data.chunks) // batch)
        _report_layers(layers, progress, batches * len(layers))
        decoder = streamed.model.get_decoder()
        with torch.inference_mode():
            for start in range(0, len(data.chunks), batch):
                ids = torch.tensor(data.chunks[start : start + batch], dtype=torch.long)
                decoder(input_ids=ids, use_cache=False)
                collector.check()
    finally:
        streamed.close()
    entries = collector.entries()
    if not entries:
        raise ImatrixError(f"No matrix product of {source.path.name}'s decoder was collected.")
    log.info("imatrix: %d entries from %d chunks of %d tokens (%s, layer by layer)",
             len(entries), len(data.chunks), data.chunk_size, dtype)  # fmt: skip
    return Imatrix(entries, (data.dataset,), len(data.chunks), data.chunk_size)


def source_method(source: SourceModel) -> str:
    """How the matrix was computed, for the manifest."""
    from ....runtime.cpu import eval_dtype

    dtype = eval_dtype(source.parameter_count)
    return f"the source's safetensors layer by layer in transformers ({dtype}), as llama-imatrix"


def _gguf_names(source: SourceModel, layers: list) -> dict[tuple[int, str], str]:
    """(layer index, module path in the layer) -> GGUF tensor name, for every Linear."""
    import gguf
    import torch

    from ..arch import ARCHITECTURES

    spec = ARCHITECTURES.get(source.geometry.architecture)
    if spec is None:
        raise ImatrixError(f"No GGUF architecture for {source.geometry.architecture}.")
    name_map = gguf.get_tensor_name_map(spec.gguf_arch, source.geometry.num_layers)
    names = {}
    for index, layer in enumerate(layers):
        for path, module in layer.template.named_modules():
            if isinstance(module, torch.nn.Linear):
                hf_name = f"{layer.prefix}.{path}.weight"
                gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
                if not gguf_name:
                    raise ImatrixError(f"{hf_name} has no GGUF name; no importance matrix "
                                       "can name it.")  # fmt: skip
                names[index, path] = gguf_name
    return names


class _Collector:
    """Sums of squared inputs per column (float64) and rows, per GGUF weight name. Q/K/V
    (and gate/up) see one input: its sums are computed once and added to each entry, so
    the entries are identical, as llama-imatrix's are."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.sums: dict[str, Any] = {}
        self.rows: dict[str, int] = {}
        self._last: tuple[Any, Any] | None = None  # (input, its sums)
        self.bad: str | None = None

    def attach(self, layers: list, names: dict[tuple[int, str], str]) -> None:
        """Pre-hooks on each layer's template Linears: every build of the layer (a deep
        copy of its template) carries them."""
        for index, layer in enumerate(layers):
            for path, module in layer.template.named_modules():
                if (index, path) in names:
                    module.register_forward_pre_hook(self._hook(names[index, path]))

    def _hook(self, name: str) -> Callable:
        def pre(_module, args) -> None:
            self.add(name, args[0])

        return pre

    def add(self, name: str, x: Any) -> None:
        torch = self.torch
        if self._last is not None and self._last[0] is x:
            squares = self._last[1]
        else:
            flat = x.reshape(-1, x.shape[-1])
            squares = torch.sum(flat.float().square(), dim=0, dtype=torch.float64)
            self._last = (x, squares)
        rows = x.numel() // x.shape[-1]
        if name in self.sums:
            self.sums[name] += squares
            self.rows[name] += rows
        else:
            self.sums[name] = squares.clone()
            self.rows[name] = rows

    def check(self) -> None:
        """After a batch: drop the last input, and refuse non-finite activations."""
        self._last = None
        for name, sums in self.sums.items():
            if not bool(self.torch.isfinite(sums).all()):
                raise ImatrixError(f"Non-finite activations in {name}; the model is broken.")

    def entries(self) -> dict[str, ImatrixEntry]:
        import numpy as np

        return {
            name: ImatrixEntry(sums.numpy().astype(np.float32)[None, :],
                               np.full(1, float(self.rows[name])))  # fmt: skip
            for name, sums in sorted(self.sums.items())
        }


def _report_layers(layers: list, progress, total: int) -> None:
    """Forward hooks on the streamed layers: `progress` after each layer of each batch."""
    if progress is None:
        return
    done = [0]

    def after(_module, _args, _out) -> None:
        done[0] += 1
        progress(done[0], total)

    for layer in layers:
        layer.register_forward_hook(after)
