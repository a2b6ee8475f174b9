"""A transformers causal LM whose decoder layers are read from their safetensors files one
at a time, so that running it needs the memory of one layer, not of the model.

`open_streamed(folder, dtype)` builds the model's skeleton on PyTorch's meta device (no
memory), as transformers does before it loads weights, and replaces each decoder layer by a
`StreamedLayer`. Each call of a streamed layer:

1. copies the layer's meta template (cheap: no data),
2. fills it with the layer's tensors from the shards, memory-mapped by safetensors (a
   tensor already in the compute dtype is a view of the file's pages, not a copy),
3. decompresses its compressed-tensors modules (FP8, packed INT4 GPTQ) with
   compressed-tensors' own `decompress_module`, which is what transformers' loader runs on
   the first forward pass,
4. runs it and drops it.

Everything else (embeddings, final norm, output head, rotary tables) is loaded once; where
the model computes in float32 over a 16-bit file, the embeddings and head stay views of the
file, widened where used (WidenedEmbedding, WidenedHead), not copied whole. The
quantization schemes are applied to the skeleton as transformers' compressed-tensors
quantizer applies them (`apply_quantization_config(..., run_compressed=False)`, then the
compressed layout), so a layer computes exactly what the whole model loaded by
`AutoModelForCausalLM.from_pretrained` computes, dynamic activation quantization included
(tests/source/test_streamed_model.py compares the logits).

The price: each forward pass reads every layer again. The evaluation passes a batch of
chunks per forward (each weight read once per batch); greedy generation reads them once per
token, which `keep_bytes` softens by keeping the first layers that fit in it materialized.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch

from ..errors import QuantkitError
from ..runtime.memory import return_free_heap


class StreamedModelError(QuantkitError):
    """A folder's tensors do not match the model its config describes."""


class ShardReader:
    """Tensors by name from a folder's safetensors shards, memory-mapped, the shards opened
    on first use and kept open until `close()`."""

    def __init__(self, folder: Path, file_of: dict[str, str] | None = None) -> None:
        from ..formats.safetensors_index import index_weight_map, shard_files, tensors_in_file

        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if file_of is not None:
            self._file_of = file_of
        elif index.is_file():
            self._file_of = index_weight_map(index)
        else:
            self._file_of = {}
            for shard in shard_files(folder):
                self._file_of.update({t.name: shard.name for t in tensors_in_file(shard, "")})
        self._open: dict[str, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._file_of:
            raise StreamedModelError(
                f"{self.folder} has no tensor {name}, which its config.json implies.",
                hint="The folder's shards do not match its config: download or convert it again.",
            )
        file = self._file_of[name]
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), framework="pt")
        return self._open[file].get_tensor(name)

    def close(self) -> None:
        self._open.clear()


class StreamedLayer(torch.nn.Module):
    """Stands in for one decoder layer: built from its meta template and the shards at each
    call (or kept, once built, when `keep`), run, then dropped. Attribute reads the model
    makes of its layers (attention_type, layer_idx) go to the template, which is not a
    submodule: its meta tensors stay out of the model's parameters.

    With a `spill` folder, a layer that had to be decompressed is written there once,
    decompressed, and read back from it afterwards as memory-mapped views: greedy generation
    then pays the decompression once per layer, not once per token."""

    def __init__(
        self, template, prefix: str, reader: ShardReader, keep: bool = False,
        spill: Path | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.__dict__.update(template=template, reader=reader, kept=None, spill=spill)
        self.prefix = prefix
        self.keep = keep

    def forward(self, *args, **kwargs):
        layer = self.__dict__["kept"]
        if layer is None:
            layer = self.materialize()
        if self.keep:
            self.__dict__["kept"] = layer
            return layer(*args, **kwargs)
        out = layer(*args, **kwargs)
        _free_tensors(layer)
        return_free_heap()  # or glibc keeps every layer's freed pages (runtime.memory)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["template"], name)

    def materialize(self):
        state = self.__dict__
        layer = copy.deepcopy(state["template"])
        load_module_tensors(layer, self.prefix, state["reader"])
        if decompress_modules(layer) and state["spill"] is not None and not self.keep:
            self._spill(layer)  # a kept layer is built once anyway
        return layer

    def _spill(self, layer) -> None:
        """Write the decompressed layer to the spill folder; read it from there from now on."""
        from safetensors.torch import save_file

        state = self.__dict__
        path = state["spill"] / f"{self.prefix}.safetensors"
        tensors = {k: v.contiguous() for k, v in layer.state_dict().items()}
        save_file(tensors, str(path))
        template = copy.deepcopy(state["template"])
        decompress_modules(template)  # on meta: the decompressed layout, no data
        names = {name: path.name for name in tensors}
        state.update(template=template, reader=ShardReader(path.parent, names))
        self.prefix = ""


def load_module_tensors(module, prefix: str, reader: ShardReader) -> None:
    """Fill every parameter and persistent buffer of `module` (on meta) with the tensor of the
    same name under `prefix` in the shards, cast to the dtype the skeleton holds it in (as
    transformers' loader casts), checked for shape."""
    for path, sub in module.named_modules():
        for store, is_param in ((sub._parameters, True), (sub._buffers, False)):
            for name, meta in list(store.items()):
                if meta is None or (not is_param and name in sub._non_persistent_buffers_set):
                    continue
                key = ".".join(part for part in (prefix, path, name) if part)
                value = reader.tensor(key)
                if tuple(value.shape) != tuple(meta.shape):
                    raise StreamedModelError(
                        f"{key} has shape {tuple(value.shape)} in {reader.folder}, but the "
                        f"config implies {tuple(meta.shape)}.",
                        hint="The folder's shards do not match its config.json.",
                    )
                value = value.to(meta.dtype)
                store[name] = torch.nn.Parameter(value, requires_grad=False) if is_param else value


def decompress_modules(module) -> bool:
    """compressed-tensors' own decompression of every compressed module inside `module`;
    whether there was one."""
    from compressed_tensors.compressors.base import decompress_module
    from compressed_tensors.quantization import QuantizationStatus

    found = False
    for sub in module.modules():
        if getattr(sub, "quantization_status", None) == QuantizationStatus.COMPRESSED:
            decompress_module(sub)
            found = True
    return found


class StreamedModel:
    """The model (`.model`: a transformers PreTrainedModel whose decoder layers stream) and the
    open shards behind it."""

    def __init__(self, model, reader: ShardReader, dtype: torch.dtype) -> None:
        self.model = model
        self.reader = reader
        self.dtype = dtype  # what it computes in (a 16-bit file's views may differ)

    @property
    def layers(self) -> list[StreamedLayer]:
        return list(self.model.get_decoder().layers)

    def compressed(self) -> bool:
        """Whether any layer is stored compressed (FP8, packed INT4) in the folder."""
        from compressed_tensors.quantization import QuantizationStatus

        return any(
            getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED
            for layer in self.layers
            for module in layer.template.modules()
        )

    def chunks_per_batch(self, n_ctx: int) -> int:
        """As many chunks of `n_ctx` tokens as keep one batch's activations inside a
        decoder layer within the budget (runtime.memory.ACTIVATION_BUDGET)."""
        from ..runtime.memory import chunk_activation_bytes, chunks_per_batch

        config = self.model.config.get_text_config()
        per_chunk = chunk_activation_bytes(
            n_ctx, config.hidden_size, config.intermediate_size, self.dtype.itemsize,
            self.compressed(),
        )  # fmt: skip
        return chunks_per_batch(per_chunk)

    def layer_bytes(self) -> int:
        """The bytes of every decoder layer once built (decompressed)."""
        return sum(layer_bytes(layer.template) for layer in self.layers)

    def spill_to(self, folder: Path | None) -> None:
        """Decompress each compressed layer once, into `folder`, from its next build on."""
        for layer in self.layers:
            layer.__dict__["spill"] = folder

    def close(self) -> None:
        self.model = None
        self.reader.close()


def open_streamed(
    folder: Path, dtype: str | None = None, keep_bytes: int = 0, spill: Path | None = None
) -> StreamedModel:
    """The folder's model with streamed decoder layers, computing in `dtype` ("float32",
    "bfloat16", ...; None: the config's own). The first layers whose tensors fit in
    `keep_bytes` stay materialized after their first use; compressed layers are decompressed
    once into `spill` (a folder the caller owns and deletes) when it is given."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    torch_dtype = getattr(torch, dtype) if dtype else _config_dtype(config)
    with torch.device("meta"), _quiet_transformers():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    quantization = getattr(config, "quantization_config", None)
    if quantization:
        _apply_compressed_tensors(model, quantization)
    reader = ShardReader(folder)
    _stream_layers(model, reader, keep_bytes, spill)
    _load_the_rest(model, reader, config)
    model.eval()
    return StreamedModel(model, reader, torch_dtype)


def _config_dtype(config):
    name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return name if isinstance(name, torch.dtype) else getattr(torch, str(name))


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _apply_compressed_tensors(model, quantization: dict) -> None:
    """The compressed-tensors schemes on the meta skeleton, in the compressed layout the
    files hold: what transformers' CompressedTensorsHfQuantizer does before it loads."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.base import compress_module
    from compressed_tensors.quantization import apply_quantization_config
    from compressed_tensors.quantization.utils import is_module_quantized
    from transformers.utils.quantization_config import CompressedTensorsConfig

    if quantization.get("quant_method") != "compressed-tensors":
        raise StreamedModelError(
            f"quantization_config.quant_method {quantization.get('quant_method')!r} is not "
            "compressed-tensors: quantkit evaluates only the folders it makes.",
        )
    hf_config = CompressedTensorsConfig.from_dict(dict(quantization))
    compressor = ModelCompressor.from_compression_config(hf_config)
    apply_quantization_config(model, compressor.quantization_config, run_compressed=False)
    if hf_config.is_quantization_compressed:  # compress_model's loop, without its tqdm bar
        for module in model.modules():
            if is_module_quantized(module):
                compress_module(module)


def _stream_layers(model, reader: ShardReader, keep_bytes: int, spill: Path | None) -> None:
    layers = model.get_decoder().layers
    prefix = _layers_prefix(model)
    kept = 0
    for index, template in enumerate(layers):
        size = layer_bytes(template)
        keep = kept + size <= keep_bytes
        kept += size if keep else 0
        layers[index] = StreamedLayer(template, f"{prefix}.{index}", reader, keep, spill)


def _free_tensors(layer) -> None:
    """Drop a used layer's parameters and buffers now. The module itself may live on in a
    reference cycle (compressed-tensors' forward closures point back at it) until Python's
    collector runs, which counts objects, not bytes: a generation pass over 32 decompressed
    8B layers held 6 GB of them before it ran."""
    for module in layer.modules():
        for store in (module._parameters, module._buffers):
            for name in store:
                store[name] = None


def layer_bytes(template) -> int:
    """The bytes of a layer once built: decompressed, when it is compressed."""
    decompressed = copy.deepcopy(template)
    decompress_modules(decompressed)  # on meta: shapes and dtypes only
    return sum(t.numel() * t.element_size() for t in decompressed.state_dict().values())


def _layers_prefix(model) -> str:
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return f"{name}.layers"
    raise StreamedModelError(f"{type(model).__name__} has no decoder with layers.")


def _load_the_rest(model, reader: ShardReader, config) -> None:
    """Embeddings, final norm and output head from the shards (the head tied to the
    embeddings when the config ties them and the shards have no head), rotary tables
    computed on the CPU."""
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    _widen_vocab_matrices(model, reader, tied)
    head = model.get_output_embeddings()
    for name, module in model.named_children():
        if module is head and tied and "lm_head.weight" not in reader:
            continue
        load_module_tensors(module, name, reader)
    if head is not None and tied and "lm_head.weight" not in reader:
        head.weight = model.get_input_embeddings().weight
    if isinstance(head, WidenedHead) and head.weight.is_meta:  # tied to a widened embedding
        head.weight = model.get_input_embeddings().weight
    computed = [
        (path, module)
        for path, module in model.named_modules()
        if any(b is not None and b.is_meta for b in module._buffers.values())
    ]
    for path, module in computed:
        parent, _, child = path.rpartition(".")
        with torch.device("cpu"):
            fresh = type(module)(config=model.config)  # rotary tables: computed, not stored
        setattr(model.get_submodule(parent) if parent else model, child, fresh)
    decompress_modules(model)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise StreamedModelError(f"{reader.folder}: no weights for {', '.join(left[:5])}.")


# --- the vocabulary matrices in a wider dtype ------------------------------------------------

class WidenedEmbedding(torch.nn.Module):
    """An embedding kept in its file's 16-bit dtype (a view of the file's pages) whose
    looked-up rows are widened to the model's dtype: the same values as a widened copy of
    the whole matrix (bf16/f16 -> f32 is exact), without holding that copy (1 GB for a
    128k x 2048 float32 matrix)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.out_dtype = dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(input_ids, self.weight).to(self.out_dtype)


class WidenedHead(torch.nn.Module):
    """The output head kept in its file's 16-bit dtype, widened for the moment it is
    applied: the widened copy exists while the head runs (after the decoder layers, whose
    activations are gone by then), not beside them. Widened whole up to
    runtime.memory.WHOLE_HEAD_BYTES:
    the matrix product then runs as the whole model's does, to the same bits (a product
    split by rows rounds differently in the last bits, from the BLAS's blocking). Above
    that, one slice of vocabulary rows at a time, so the widening costs a slice."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.out_dtype = dtype

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from ..runtime.memory import WHOLE_HEAD_BYTES, head_slice_rows

        rows, columns = self.weight.shape
        itemsize = torch.empty(0, dtype=self.out_dtype).element_size()
        if rows * columns * itemsize <= WHOLE_HEAD_BYTES:
            return torch.nn.functional.linear(hidden, self.weight.to(self.out_dtype))
        step = head_slice_rows(columns, itemsize)
        out = torch.empty((*hidden.shape[:-1], rows), dtype=self.out_dtype, device=hidden.device)
        for start in range(0, rows, step):
            part = self.weight[start : start + step].to(self.out_dtype)
            out[..., start : start + step] = torch.nn.functional.linear(hidden, part)
        return out


def _widen_vocab_matrices(model, reader: ShardReader, tied: bool) -> None:
    """Where the model computes in a wider dtype than its file holds the embeddings and
    head in (a float32 evaluation of a BF16 folder), keep them as file views and widen
    what is used (WidenedEmbedding, WidenedHead), rather than copy the two largest
    matrices whole."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    for module, kind in ((embed, WidenedEmbedding), (head, WidenedHead)):
        if module is None or getattr(module, "bias", None) is not None:
            continue
        name = _module_name(model, module)
        key = f"{name}.weight"
        if key not in reader:
            if kind is WidenedHead and tied and isinstance(model.get_input_embeddings(),
                                                           WidenedEmbedding):  # fmt: skip
                weight = torch.empty(module.weight.shape, device="meta")
                _replace(model, name, WidenedHead(weight, module.weight.dtype))
            continue
        stored = reader.tensor(key)
        wanted = module.weight.dtype
        if stored.dtype.itemsize >= wanted.itemsize or not wanted.is_floating_point:
            continue
        if tuple(stored.shape) != tuple(module.weight.shape):
            continue  # load_module_tensors names the mismatch
        _replace(model, name, kind(stored, wanted))


def _module_name(model, module) -> str:
    return next(name for name, sub in model.named_modules() if sub is module)


def _replace(model, name: str, module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
