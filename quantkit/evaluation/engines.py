"""Engines that turn token ids into next-token logits, one per artifact family.

- `LlamaCppEngine`: a GGUF file in llama.cpp (llama-cpp-python's low-level API), several
  chunks per decode and only the rows asked for (quantkit.evaluation.llama_batch).
- `TransformersEngine`: any folder transformers loads (BF16/FP16 safetensors, FP8 and GPTQ
  in the compressed-tensors format), on the CPU, its decoder layers streamed from the shards
  one at a time (quantkit.source.streamed_model): a batch of chunks goes through each layer
  while it is in memory, so memory is bounded by a layer and the batch's activations, and
  each weight is read once per batch.
- `MLXEngine`: an MLX folder in mlx (mlx_lm.load's model), on mlx's default device (the
  CPU on Linux, where mlx[cpu] is the only backend).

Each engine has a cheap tokenizer side (no weights loaded: llama.cpp's vocab-only mode, the
`tokenizers` library) and a heavy side opened with `load()`. Only one model is in memory at
a time: the reference pass closes the source before the artifact is loaded.

The reference cache lives here too: the source's top-k compressed distributions, keyed by
the content hashes the engines compute, written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifact.locate import locate_artifact
from ..errors import QuantkitError, require
from ..runtime import cpu
from ..runtime.memory import sequences_per_batch
from .file_hashes import file_sha256

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class EngineError(QuantkitError):
    """An artifact or source cannot be opened for evaluation."""


def resolve_model_path(path: str | Path) -> Path:
    """A .gguf file, a folder holding one artifact .gguf, or a transformers folder, found
    by quantkit.artifact.locate (the rules and errors `quantkit inspect` uses)."""
    return locate_artifact(path).path


def open_engine(path: str | Path, *, n_ctx: int, dtype: str = "float32") -> Engine:
    found = locate_artifact(path)
    if found.kind == "gguf":
        return LlamaCppEngine(found.path, n_ctx=n_ctx)
    if found.kind == "mlx":
        return MLXEngine(found.path)
    return TransformersEngine(found.path, dtype=dtype, n_ctx=n_ctx)


class Engine:
    """Common shape: tokenizer side (add_bos, bos_id, bos_text, encode, chat_template),
    then load() / logits(ids) or logits_batch(chunks, rows) / close()."""

    name = ""
    path: Path
    add_bos: bool = False
    bos_id: int | None = None
    bos_text: str = ""
    parameters: int | None = None

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def chat_template(self, name: str) -> str | None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def logits(self, ids: list[int]):
        """float32 array [len(ids), vocab]: the next-token logits at every position."""
        raise NotImplementedError

    def batch_chunks(self, rows_per_chunk: int) -> int:
        """How many chunks `logits_batch` should be given at once when each needs
        `rows_per_chunk` rows of logits."""
        return 1

    def logits_batch(self, chunks: list[list[int]], rows: slice) -> list:
        """For each chunk, float32 [rows, vocab]: the next-token logits at positions `rows`
        of that chunk (each evaluated from a fresh context). One chunk at a time unless an
        engine does better. The next call may overwrite the arrays (llama.cpp's engine
        reuses one buffer): copy what must outlive it."""
        return [self.logits(ids)[rows] for ids in chunks]

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class LlamaCppEngine(Engine):
    name = "llama.cpp"

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int | None = None) -> None:
        require("llama_cpp", "gguf")
        from llama_cpp import Llama

        from ..runtime.llama_cpp import repacking, silence_llama_cpp

        silence_llama_cpp()
        self.path = path
        self.repacked = repacking()  # runtime.llama_cpp: llama.cpp's weight repacking
        self.n_ctx = n_ctx
        self.n_threads = n_threads or cpu.threads()
        self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._n_vocab = int(self._vocab.n_vocab())
        self._model: Any = None  # llama_model_p once loaded
        self._decoder: Any = None  # llama_batch.ChunkDecoder, made on the first batch
        self.add_bos = bool(self._vocab._model.add_bos_token())
        bos = self._vocab.token_bos()
        self.bos_id = bos if bos >= 0 else None
        self.bos_text = self._piece(bos).decode("utf-8", "replace") if bos >= 0 else ""
        self._metadata: dict[str, str] = dict(self._vocab.metadata)

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        ids = self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        # llama.cpp gives no offsets: walk the pieces' bytes and map byte -> character.
        char_at = _byte_to_char(text)
        starts, position = [], 0
        for token in ids:
            starts.append(char_at[min(position, len(char_at) - 1)])
            position += len(self._piece(token))
        return ids, starts

    def _piece(self, token: int) -> bytes:
        """The token's bytes (llama-cpp-python's own token_to_piece returns its whole
        32-byte buffer, padding included)."""
        import ctypes

        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab._model.vocab, token, buf, size, 0, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def chat_template(self, name: str) -> str | None:
        from ..formats.gguf_read import chat_template_key

        return self._metadata.get(chat_template_key(name))

    def fingerprint(self) -> str:
        return file_sha256(self.path)

    def describe(self) -> str:
        """Whether the weights were repacked: the plain kernels round differently."""
        return f"llama.cpp (weights {'repacked' if self.repacked else 'not repacked'})"

    def load(self) -> None:
        import llama_cpp

        from ..runtime.llama_cpp import model_params

        llama_cpp.llama_backend_init()
        params = model_params(self.repacked)
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {self.path.name} for evaluation.")
        self.parameters = int(llama_cpp.llama_model_n_params(self._model))

    def batch_chunks(self, rows_per_chunk: int) -> int:
        return sequences_per_batch(rows_per_chunk, self._n_vocab, self.n_ctx)

    def logits_batch(self, chunks: list[list[int]], rows: slice) -> list:
        """Several chunks in one llama_decode, each its own sequence (llama_batch.py)."""
        from .llama_batch import ChunkDecoder

        assert self._model is not None, "load() first"
        if any(len(ids) > self.n_ctx for ids in chunks):
            raise EngineError(f"{max(map(len, chunks))} tokens do not fit n_ctx={self.n_ctx}.")
        if self._decoder is None or self._decoder.n_seq < len(chunks):
            self._close_decoder()  # sized by the first (largest) group: made once per load
            self._decoder = ChunkDecoder(
                self._model, n_ctx=self.n_ctx, n_seq=len(chunks), n_threads=self.n_threads
            )
        return self._decoder.decode(chunks, rows)

    def logits(self, ids: list[int]):
        return self.logits_batch([ids], slice(None))[0].copy()

    def _close_decoder(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def close(self) -> None:
        import llama_cpp

        self._close_decoder()
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # the models hold file mappings, the context its buffers
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
            self._vocab.close()


def fingerprinted_files(folder: Path) -> list[Path]:
    """The files a transformers folder's fingerprint hashes: weights, configs, templates."""
    return [path for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in (".safetensors", ".json", ".jinja")]  # fmt: skip


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, folder: Path, *, dtype: str = "float32", n_ctx: int = 512) -> None:
        from tokenizers import Tokenizer

        from ..formats.safetensors_index import tensor_inventory
        from ..source.tokenizer_bundle import load_tokenizer_bundle

        self.path = folder
        self.dtype = dtype
        self.n_ctx = n_ctx
        self.bundle = load_tokenizer_bundle(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._model: Any = None
        self.add_bos = self.bundle.add_bos
        self.bos_text = self.bundle.special_token("bos") or ""
        self.bos_id = self.bundle.token_id(self.bos_text) if self.bos_text else None
        self.parameters = sum(t.numel for t in tensor_inventory(folder))

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]

    def chat_template(self, name: str) -> str | None:
        return self.bundle.chat_templates.get(name)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in fingerprinted_files(self.path):
            digest.update(f"{path.name}\0{file_sha256(path)}\0".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        return f"transformers ({self.dtype}, cpu, layer by layer)"

    def load(self) -> None:
        require("torch", "torch")
        from ..source.model import load_source
        from ..source.streamed_model import open_streamed
        from ..source.structure import check_structure

        # A folder whose shards do not match its config is refused before it is measured
        # (transformers would fill a missing weight with random values and only warn).
        check_structure(load_source(self.path))
        self._model = open_streamed(self.path, self.dtype)

    def batch_chunks(self, rows_per_chunk: int) -> int:
        """As many chunks as keep one batch's activations within the budget
        (StreamedModel.chunks_per_batch)."""
        return self._model.chunks_per_batch(self.n_ctx)

    def logits_batch(self, chunks: list[list[int]], rows: slice):
        """The batch through the model layer by layer now; the output head on each chunk's
        `rows` only, when the caller reaches that chunk (a generator: the whole batch's
        logits at once would be n_chunks x rows x vocab floats)."""
        import torch

        assert self._model is not None, "load() first"
        model = self._model.model
        with torch.inference_mode():
            ids = torch.tensor(chunks, dtype=torch.long)
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        return _head_rows(model, hidden, rows)

    def logits(self, ids: list[int]):
        return next(self.logits_batch([ids], slice(None)))

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model = None


def _head_rows(model, hidden, rows: slice):
    import torch

    head = model.get_output_embeddings()
    for states in hidden:
        with torch.inference_mode():
            yield head(states[rows]).float().numpy()


class MLXEngine(TransformersEngine):
    """An MLX folder: the tokenizer side is the folder's tokenizer.json (as for a
    transformers folder, and byte-identical to the source's when inspect passes), the
    model is mlx_lm.load's, run by mlx. Its floating parameters (norms, and the quantized
    layers' scales and biases) are cast to float32, which keeps every weight's value exactly
    (bf16 -> f32 is exact) and computes in float32 like the source's transformers pass: the
    measure is the quantization's, and mlx's CPU kernels run bfloat16 about 7x slower."""

    name = "mlx"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, dtype="float32")
        self.parameters = _mlx_parameters(folder) or self.parameters

    batch_chunks = Engine.batch_chunks  # one chunk per call: mlx has no layer streaming
    logits_batch = Engine.logits_batch

    def describe(self) -> str:
        import mlx.core as mx

        return f"mlx (float32, {mx.default_device()})"

    def load(self) -> None:
        require("mlx_lm", "mlx")
        import mlx.core as mx
        from mlx_lm import load

        self._model, _ = load(str(self.path))
        self._model.set_dtype(mx.float32)

    def logits(self, ids: list[int]):
        import mlx.core as mx
        import numpy as np

        assert self._model is not None, "load() first"
        out = self._model(mx.array([ids], dtype=mx.int32))[0].astype(mx.float32)
        mx.eval(out)
        return np.array(out, copy=True)

    def close(self) -> None:
        self._model = None


def _mlx_parameters(folder: Path) -> int | None:
    """The parameter count mlx-lm records in model.safetensors.index.json (packed 4-bit
    weights would count 8 to a uint32 otherwise); None when it does not."""
    index = folder / "model.safetensors.index.json"
    try:
        value = json.loads(index.read_text(encoding="utf-8"))["metadata"]["total_parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) else None


def _byte_to_char(text: str) -> list[int]:
    """For each UTF-8 byte of `text` (plus one past the end), the index of its character."""
    out: list[int] = []
    for index, char in enumerate(text):
        out.extend([index] * len(char.encode("utf-8")))
    out.append(len(text))
    return out
