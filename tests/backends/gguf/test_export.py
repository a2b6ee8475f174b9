"""The GGUF writer (quantkit.backends.gguf.export): block streaming, Q/K regrouping,
llama3 rope factors, output types, and end-to-end logits in llama.cpp against transformers.

Every expectation here is computed independently of quantkit: safetensors files are read
with a few lines of numpy, llama.cpp's Q/K permutation is rewritten with explicit indices,
and Meta's llama3 rope scaling is recomputed in float64.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from support.gguf_reader import read_gguf_tensors

from quantkit.backends.gguf import tensors as gguf_tensors
from quantkit.backends.gguf.arch import llama3_rope_factors
from quantkit.backends.gguf.export import ExportResult, export_gguf
from quantkit.backends.gguf.tensors import converted_blocks, index_source_tensors
from quantkit.errors import ConversionError, UnsupportedArchitectureError
from quantkit.source.model import RopeSettings, load_source

Q = gguf.GGMLQuantizationType

# --- independent references ---------------------------------------------------------------


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute`, written out index by index.

    Per head, HF stores the rotary halves as [x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}];
    llama.cpp's (GPT-J style) rope wants the pairs interleaved: [x_0, y_0, x_1, y_1, ...].
    """
    rows = w.shape[0]
    head_dim = rows // n_head
    half = head_dim // 2
    order = np.empty(rows, dtype=np.int64)
    for h in range(n_head):
        for i in range(half):
            for j in range(2):
                order[h * head_dim + 2 * i + j] = h * head_dim + j * half + i
    return w[order]


def meta_rope_factors(
    theta: float, head_dim: int, factor: float, low: float, high: float, old_ctx: int
) -> np.ndarray:
    """Divisors freq / apply_scaling(freq) of Meta's llama3 rope scaling, in float64."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            new = freq
        elif wavelen > old_ctx / low:
            new = freq / factor
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            new = (1 - smooth) * freq / factor + smooth * freq
        out.append(freq / new)
    return np.array(out, dtype=np.float64)


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (dtype, raw array) for every *.safetensors file of a folder (BF16 as uint16)."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        blob = path.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            raw = np.frombuffer(blob[8 + n + start : 8 + n + end], dtype=_ST_DTYPES[meta["dtype"]])
            out[name] = (meta["dtype"], raw.reshape(meta["shape"]))
    return out


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, (dtype, arr) in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def to_f32(dtype: str, raw: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_bits(values)
    return values.astype(_ST_DTYPES[dtype])


def gguf_name(hf: str) -> str:
    """HF tensor name -> GGUF name for Llama / Qwen3 (llama.cpp's naming)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight"}  # fmt: skip
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.<i>.<module...>.weight
    layer, module = parts[2], ".".join(parts[3:-1])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}  # fmt: skip
    return f"blk.{layer}.{names[module]}.{parts[-1]}"


def dequant(tensor: Any) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def q8_0_bound(values: np.ndarray) -> np.ndarray:
    """Per-element error bound of Q8_0: half a step of its 32-wide block, plus the F16
    rounding of the block scale (over up to 127 steps)."""
    blocks = values.reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    bound = step * 0.5 + np.abs(blocks) * 2e-3 + 1e-12
    return np.broadcast_to(bound, blocks.shape).reshape(values.shape)


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def compare_logits(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, logit scale, top-1 agreement)."""
    assert ours.shape == ref.shape
    assert np.isfinite(ours).all(), "llama.cpp produced non-finite logits"
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    return diff, scale, top1


def random_ids(n: int, *, vocab: int, bos: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [bos, *(int(i) for i in rng.integers(100, vocab - 300, n - 1))]


# --- a tiny Llama with awkward dims, built here --------------------------------------------

TINY_HEADS, TINY_KV_HEADS, TINY_HEAD_DIM = 4, 2, 16
# llama3 rope scaling with a 64-token "original" context, so that the scaled frequencies
# matter within a 120-token test sequence (Llama 3.1's 8192 would not).
TINY_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 64}  # fmt: skip


def tiny_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49160,
        "hidden_size": 64, "intermediate_size": 48,  # 48 columns: Q8_0 must fall back
        "num_hidden_layers": 2, "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": TINY_KV_HEADS, "head_dim": TINY_HEAD_DIM,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "rope_parameters": dict(TINY_ROPE), "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    config.update(overrides)
    return config


def build_tiny(demo_model: Path, dest: Path, dtype: str, **overrides: Any) -> Path:
    """Tiny LlamaForCausalLM with random weights and the demo model's tokenizer."""
    import torch
    import transformers

    torch.manual_seed(7)
    config = tiny_config(**overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(6.0)  # sharp attention: rope and head order show in the logits
    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    dest.mkdir(parents=True)
    model.to(torch_dtype).save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(demo_model / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {d: build_tiny(demo_model, root / d.lower(), d) for d in ("BF16", "F16", "F32")}


# --- 1. block streaming -------------------------------------------------------------------

N_HEAD, HEAD_DIM, COLS = 6, 8, 40
HEAD_BYTES = HEAD_DIM * COLS * 4  # one head's rows, in float32 bytes


@pytest.mark.parametrize("src_dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize(
    ("block_bytes", "n_blocks"),
    [(1, 6), (HEAD_BYTES, 6), (4 * HEAD_BYTES + 7, 2), (10**9, 1)],
    ids=["1-byte", "one-head", "4-heads-uneven", "whole"],
)
def test_blockwise_qk_permutation_equals_whole_tensor_permutation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src_dtype: str, block_bytes: int,
    n_blocks: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(1)
    values = rng.standard_normal((N_HEAD * HEAD_DIM, COLS)).astype(np.float32)
    kv = rng.standard_normal((2 * HEAD_DIM, COLS)).astype(np.float32)
    path = tmp_path / "model.safetensors"
    # A tensor before ours so its data does not start at offset 0.
    write_safetensors(path, {"pad": ("F32", np.arange(3, dtype=np.float32)),
                             "q": (src_dtype, encode(values, src_dtype)),
                             "k": (src_dtype, encode(kv, src_dtype))})  # fmt: skip
    monkeypatch.setattr(gguf_tensors, "BLOCK_BYTES", block_bytes)
    index = index_source_tensors([path])

    blocks = list(converted_blocks(index["q"], Q.F32, N_HEAD))
    assert len(blocks) == n_blocks
    got = np.frombuffer(b"".join(blocks), dtype=np.float32).reshape(values.shape)
    source = to_f32(src_dtype, encode(values, src_dtype))
    np.testing.assert_array_equal(got, llama_cpp_permute(source, N_HEAD))

    got_k = np.frombuffer(b"".join(converted_blocks(index["k"], Q.F32, 2)), np.float32)
    source_k = to_f32(src_dtype, encode(kv, src_dtype))
    np.testing.assert_array_equal(got_k.reshape(kv.shape), llama_cpp_permute(source_k, 2))


def test_blockwise_bf16_passthrough_is_bit_exact_for_every_bit_pattern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All 65536 BF16 patterns (NaNs, infinities, subnormals, -0) must be copied, not rounded.
    bits = np.random.default_rng(2).permutation(np.arange(65536, dtype=np.uint32))
    bits = bits.astype(np.uint16).reshape(-1, 64)  # 1024 rows = 128 heads of 8
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": ("BF16", bits), "q": ("BF16", bits)})
    monkeypatch.setattr(gguf_tensors, "BLOCK_BYTES", 1000)
    index = index_source_tensors([path])

    plain = list(converted_blocks(index["w"], Q.BF16, None))
    assert len(plain) > 100  # streamed in many blocks
    np.testing.assert_array_equal(np.frombuffer(b"".join(plain), np.uint16), bits.ravel())
    permuted = np.frombuffer(b"".join(converted_blocks(index["q"], Q.BF16, 128)), np.uint16)
    np.testing.assert_array_equal(permuted.reshape(bits.shape), llama_cpp_permute(bits, 128))


def test_blockwise_q8_0_equals_whole_tensor_quantization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.random.default_rng(3).standard_normal((N_HEAD * HEAD_DIM, 64)).astype(np.float32)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"q": ("F32", values)})
    monkeypatch.setattr(gguf_tensors, "BLOCK_BYTES", 1)
    index = index_source_tensors([path])
    streamed = b"".join(converted_blocks(index["q"], Q.Q8_0, N_HEAD))
    whole = gguf.quants.quantize(llama_cpp_permute(values, N_HEAD), Q.Q8_0)
    assert streamed == np.ascontiguousarray(whole).tobytes()


def test_truncated_tensor_data_is_a_conversion_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": ("F32", np.ones((64, 32), np.float32))})
    index = index_source_tensors([path])
    path.write_bytes(path.read_bytes()[:-100])  # truncated after indexing
    with pytest.raises(ConversionError, match="ended inside tensor w"):
        list(converted_blocks(index["w"], Q.F32, None))


def _expected_tensors(folder: Path, *, permute: bool, heads: int, kv_heads: int) -> dict:
    """GGUF name -> (dtype, raw HF array in llama.cpp row order)."""
    out = {}
    for name, (dtype, raw) in read_safetensors(folder).items():
        if permute and name.endswith("q_proj.weight"):
            raw = llama_cpp_permute(raw, heads)
        elif permute and name.endswith("k_proj.weight"):
            raw = llama_cpp_permute(raw, kv_heads)
        out[gguf_name(name)] = (dtype, raw)
    return out


@pytest.mark.parametrize("src_dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("out_type", ["BF16", "F16", "F32", "Q8_0"])
def test_export_values_per_output_type(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    src_dtype: str, out_type: str,
) -> None:  # fmt: skip
    if (src_dtype, out_type) in {("BF16", "BF16"), ("F32", "Q8_0")}:
        # Stream in many small blocks (q_proj: 4 blocks of one head); slow, so not for all.
        monkeypatch.setattr(gguf_tensors, "BLOCK_BYTES", 4096)
    folder = tiny_models[src_dtype]
    out = tmp_path / "tiny.gguf"
    calls: list[tuple[int, int]] = []
    result = export_gguf(
        load_source(folder), out, out_type=out_type, progress=lambda d, t: calls.append((d, t))
    )
    assert isinstance(result, ExportResult) and result.path == out and result.out_type == out_type

    expected = _expected_tensors(folder, permute=True, heads=TINY_HEADS, kv_heads=TINY_KV_HEADS)
    tensors = read_gguf_tensors(out)
    assert set(tensors) == set(expected) | {"rope_freqs.weight"}
    assert calls == [(i, len(tensors)) for i in range(1, len(tensors) + 1)]

    wanted = {"BF16": Q.BF16, "F16": Q.F16, "F32": Q.F32, "Q8_0": Q.Q8_0}[out_type]
    counts: dict[str, int] = {}
    for name, (dtype, raw) in expected.items():
        tensor = tensors[name]
        source = to_f32(dtype, raw)
        if raw.ndim == 1:
            want_type = Q.F32
        elif out_type == "Q8_0" and raw.shape[-1] % 32:
            want_type = Q.F16  # ffn_down has 48 columns
        else:
            want_type = wanted
        assert tensor.tensor_type == want_type, name
        counts[want_type.name] = counts.get(want_type.name, 0) + 1
        got = dequant(tensor)
        assert got.shape == source.shape, name
        if want_type == Q.F32:
            np.testing.assert_array_equal(got, source, err_msg=name)
        elif want_type == Q.BF16 and dtype == "BF16" or want_type == Q.F16 and dtype == "F16":
            # same type: the bits are copied, not converted
            np.testing.assert_array_equal(tensor.data.view(raw.dtype).reshape(raw.shape), raw)
        elif want_type == Q.BF16:
            np.testing.assert_allclose(got, source, rtol=2**-8, atol=0, err_msg=name)
        elif want_type == Q.F16:
            np.testing.assert_allclose(got, source, rtol=2**-11, atol=2**-25, err_msg=name)
        else:
            assert (np.abs(got - source) <= q8_0_bound(source)).all(), name
    counts["F32"] += 1  # rope_freqs
    assert result.tensor_types == counts
    if out_type == "Q8_0":
        assert counts["F16"] == 2  # the two ffn_down tensors, nothing else


def test_q8_0_falls_back_to_f16_for_columns_not_multiple_of_32(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    result = export_gguf(load_source(tiny_models["BF16"]), tmp_path / "q8.gguf", out_type="Q8_0")
    types = {n: t.tensor_type for n, t in read_gguf_tensors(result.path).items()}
    assert types["blk.0.ffn_down.weight"] == Q.F16
    assert types["blk.1.ffn_down.weight"] == Q.F16
    assert types["blk.0.ffn_up.weight"] == Q.Q8_0  # 64 columns: quantized
    assert types["blk.0.attn_q.weight"] == Q.Q8_0
    assert types["token_embd.weight"] == Q.Q8_0
    assert types["blk.0.attn_norm.weight"] == Q.F32


def test_unsupported_output_type_is_refused_before_writing(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.gguf"
    with pytest.raises(ConversionError, match="Q4_K_M is not written directly"):
        export_gguf(load_source(tiny_models["BF16"]), out, out_type="Q4_K_M")
    assert not out.exists()


def test_unsupported_architecture_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "mistral"
    shutil.copytree(tiny_models["BF16"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    source = load_source(folder, require_architecture=False)
    with pytest.raises(UnsupportedArchitectureError, match="MistralForCausalLM"):
        export_gguf(source, tmp_path / "x.gguf")


def test_llama_attention_bias_is_permuted_like_the_weights(
    demo_model: Path, tmp_path: Path
) -> None:
    folder = build_tiny(demo_model, tmp_path / "bias", "F32", attention_bias=True)
    out = tmp_path / "bias.gguf"
    export_gguf(load_source(folder), out, out_type="F32")
    source = read_safetensors(folder)
    tensors = read_gguf_tensors(out)
    q_bias = source["model.layers.0.self_attn.q_proj.bias"][1]
    np.testing.assert_array_equal(
        dequant(tensors["blk.0.attn_q.bias"]), llama_cpp_permute(q_bias, TINY_HEADS)
    )


# --- 2. rope_freqs ------------------------------------------------------------------------

LLAMA31_ROPE = RopeSettings(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)


@pytest.mark.parametrize("head_dim", [128, 64])
def test_llama3_rope_factors_match_metas_apply_scaling(head_dim: int) -> None:
    got = llama3_rope_factors(LLAMA31_ROPE, head_dim)
    assert got is not None and got.dtype == np.float32 and got.shape == (head_dim // 2,)
    want = meta_rope_factors(500000.0, head_dim, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-6, atol=0)
    # All three regimes occur: kept (1), interpolated (between), divided by the factor (8).
    assert got[0] == 1.0 and got[-1] == 8.0
    assert ((got > 1.0) & (got < 8.0)).any()


def test_llama3_rope_factors_with_other_parameters() -> None:
    rope = RopeSettings(10000.0, "llama3", 4.0, 2.0, 8.0, 256)
    want = meta_rope_factors(10000.0, 32, 4.0, 2.0, 8.0, 256)
    np.testing.assert_allclose(llama3_rope_factors(rope, 32), want, rtol=1e-6)


@pytest.mark.parametrize(
    "rope",
    [RopeSettings(500000.0, "default"), RopeSettings(10000.0, "linear", factor=2.0),
     RopeSettings(10000.0, "yarn", factor=4.0, original_max_position_embeddings=4096)],
    ids=["default", "linear", "yarn"],
)  # fmt: skip
def test_no_rope_factors_without_llama3_scaling(rope: RopeSettings) -> None:
    assert llama3_rope_factors(rope, 128) is None


def test_rope_freqs_tensor_in_gguf(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = export_gguf(load_source(tiny_models["BF16"]), tmp_path / "t.gguf").path
    tensor = read_gguf_tensors(out)["rope_freqs.weight"]
    assert tensor.tensor_type == Q.F32
    want = meta_rope_factors(10000.0, TINY_HEAD_DIM, 8.0, 1.0, 4.0, 64)
    np.testing.assert_allclose(np.asarray(tensor.data, np.float64), want, rtol=1e-6)


# --- 3. end to end: llama.cpp logits against transformers ----------------------------------


def _export(folder: Path, out: Path, out_type: str = "BF16") -> Path:
    return export_gguf(load_source(folder), out, out_type=out_type).path


def _default_rope_copy(folder: Path, dest: Path) -> Path:
    """The same weights with llama3 rope scaling removed from config.json."""
    dest.mkdir()
    for path in folder.iterdir():
        if path.name != "config.json":
            (dest / path.name).symlink_to(path.resolve())
    config = json.loads((folder / "config.json").read_text())
    theta = config["rope_parameters"]["rope_theta"]
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("out_type", ["BF16", "Q8_0"])
def test_tiny_llama_logits_match_transformers(
    tiny_models: dict[str, Path], tmp_path: Path, out_type: str
) -> None:
    """Sharp attention, a 64-token original rope context and 120 positions: a wrong head
    order, missing rope_freqs or broken GQA each move the logits far more than allowed."""
    folder = tiny_models["F32"]
    ids = random_ids(120, vocab=49160, bos=1)
    ours = llama_cpp_logits(_export(folder, tmp_path / "t.gguf", out_type), ids)
    ref = hf_logits(folder, ids)
    unscaled = hf_logits(_default_rope_copy(folder, tmp_path / "unscaled"), ids)
    diff, scale, top1 = compare_logits(ours, ref)
    limit = 0.015 if out_type == "BF16" else 0.05  # measured: 0.005 and 0.019
    assert diff <= limit * scale, (diff, scale)
    assert top1 >= (0.9 if out_type == "BF16" else 0.8)
    # llama.cpp applies the llama3 frequencies: it is far closer to the scaled reference.
    assert diff <= 0.25 * float(np.abs(unscaled - ref).max())


@pytest.mark.slow
def test_llama31_bf16_logits_match_transformers(llama31_model: Path, tmp_path: Path) -> None:
    ids = random_ids(160, vocab=128000, bos=128000)
    out = _export(llama31_model, tmp_path / "l31.gguf")
    tensors = read_gguf_tensors(out)
    want = meta_rope_factors(500000.0, 64, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(dequant(tensors["rope_freqs.weight"]), want, rtol=1e-6)
    assert "output.weight" in tensors  # untied
    diff, scale, top1 = compare_logits(llama_cpp_logits(out, ids), hf_logits(llama31_model, ids))
    assert top1 >= 0.9
    assert diff <= 0.01 * scale, (diff, scale)


@pytest.mark.slow
def test_llama31_q8_0_runs_and_stays_close(llama31_model: Path, tmp_path: Path) -> None:
    ids = random_ids(64, vocab=128000, bos=128000, seed=1)
    out = _export(llama31_model, tmp_path / "l31q8.gguf", "Q8_0")
    assert {t.tensor_type for t in read_gguf_tensors(out).values()} == {Q.Q8_0, Q.F32}
    diff, scale, top1 = compare_logits(llama_cpp_logits(out, ids), hf_logits(llama31_model, ids))
    assert diff <= 0.04 * scale, (diff, scale)
    assert top1 >= 0.6  # random weights: near-flat logits, argmax flips under Q8_0 noise


@pytest.mark.slow
def test_llama31_rope_scaling_reaches_llama_cpp(llama31_model: Path, tmp_path: Path) -> None:
    """Llama 3.1's own rope parameters, end to end: with q/k doubled (sharper attention)
    the llama3 frequency scaling is visible within 200 positions."""
    import torch
    from safetensors.torch import load_file, save_file

    sharp = tmp_path / "sharp"
    sharp.mkdir()
    for path in llama31_model.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy2(path, sharp / path.name)
            continue
        state = load_file(path)
        for name in state:
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                state[name] = (state[name].float() * 2).to(torch.bfloat16)
        save_file(state, sharp / path.name, metadata={"format": "pt"})
    ids = random_ids(200, vocab=128000, bos=128000, seed=2)
    ours = llama_cpp_logits(_export(sharp, tmp_path / "sharp.gguf"), ids)
    ref = hf_logits(sharp, ids)
    unscaled = hf_logits(_default_rope_copy(sharp, tmp_path / "unscaled"), ids)
    diff, scale, _ = compare_logits(ours, ref)
    assert diff <= 0.01 * scale, (diff, scale)
    assert diff <= 0.5 * float(np.abs(unscaled - ref).max())


@pytest.mark.slow
def test_qwen3_bf16_logits_match_transformers(qwen3_model: Path, tmp_path: Path) -> None:
    ids = random_ids(120, vocab=128000, bos=128000, seed=3)
    out = _export(qwen3_model, tmp_path / "qwen3.gguf")
    tensors = read_gguf_tensors(out)
    assert "rope_freqs.weight" not in tensors and "blk.0.attn_q_norm.weight" in tensors
    # Qwen3 uses NeoX rope: Q/K are written in HF order, bit for bit.
    source = read_safetensors(qwen3_model)
    raw = source["model.layers.0.self_attn.q_proj.weight"][1]
    np.testing.assert_array_equal(
        tensors["blk.0.attn_q.weight"].data.view(np.uint16).reshape(raw.shape), raw
    )
    diff, scale, top1 = compare_logits(llama_cpp_logits(out, ids), hf_logits(qwen3_model, ids))
    assert top1 >= 0.9
    assert diff <= 0.01 * scale, (diff, scale)


@pytest.mark.slow
def test_demo_model_bf16_logits_match_transformers(demo_model: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(demo_model / "tokenizer.json"))
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is the capital of France, and why is it famous?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris. It is famous for"
    )
    ids = tok.encode(text, add_special_tokens=False).ids
    out = _export(demo_model, tmp_path / "demo.gguf")
    tensors = read_gguf_tensors(out)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert "rope_freqs.weight" not in tensors
    diff, scale, top1 = compare_logits(llama_cpp_logits(out, ids), hf_logits(demo_model, ids))
    assert top1 >= 0.9
    assert diff <= 0.03 * scale, (diff, scale)
