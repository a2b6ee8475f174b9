"""The memory model against published artifact sizes and llama.cpp's own tables.

Configs: quantkit.planning.hermes_family holds the architecture fields of meta-llama/Llama-3.1-8B,
-70B and -405B (Instruct) config.json. Published sizes, with where they come from:

BF16 safetensors: `total_size` in each repo's model.safetensors.index.json
  8B   16,060,522,496   meta-llama/Llama-3.1-8B(-Instruct)
  70B 141,107,412,992   meta-llama/Llama-3.1-70B(-Instruct)
  405B 811,706,777,600  meta-llama/Llama-3.1-405B (also unsloth/Meta-Llama-3.1-405B)
GGUF (llama.cpp quantizations):
  8B Q8_0     8,540,770,848 B  pek111/Meta-Llama-3.1-8B-Instruct-GGUF LFS pointer
                               (bartowski/Meta-Llama-3.1-8B-Instruct-GGUF lists 8.54 GB)
  8B Q4_K_M   4.92 GB          bartowski/Meta-Llama-3.1-8B-Instruct-GGUF file list
                               (Ollama llama3.1:8b blob 4,920,738,944 B)
  70B Q8_0    74.98 GB         bartowski/Meta-Llama-3.1-70B-Instruct-GGUF README table
  70B Q4_K_M  42.52 GB         same table (the mission's "about 42.5 GB")
  405B Q4_K_M 243.07 GB ~ 245.7 GB: bullerwins/Meta-Llama-3.1-405B-Instruct-GGUF, six
              shards of 44.5+44.9+44.5+44.6+45.0+22.2 GB (rounded per shard; split files
              repeat the metadata); checked against that sum
  405B Q8_0   431 GB           Ollama library, llama3.1:405b-instruct-q8_0 (431GB) --
              recalled from that listing; it could not be re-checked offline, so this
              row is the weakest of the table (the 405B Q4_K_M shard sum agrees with
              the same model at 1.1%)
FP8 safetensors (llmcompressor / compressed-tensors, lm_head and embeddings in BF16):
  8B  9.08 GB   neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8 (5 GB + 4.08 GB shards;
                9,081,280,648 B in total)
  70B 72.7 GB   neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8: 15 shards, model card
  405B 410 GB   amd/Meta-Llama-3.1-405B-Instruct-fp8-quark-vllm repo size (410 GB)
"""

from __future__ import annotations

import pytest

from quantkit.formats.gguf_types import GGML_TYPES, QuantContext, tensor_type, use_more_bits
from quantkit.planning import memory as mem
from quantkit.planning.hermes_family import LLAMA31_8B, LLAMA31_70B, LLAMA31_405B, LLAMA31_405B_KV16
from quantkit.planning.model_spec import spec_from_config

CONFIGS = {"8B": LLAMA31_8B, "70B": LLAMA31_70B, "405B": LLAMA31_405B}

PUBLISHED = [
    ("8B", "BF16", 16_060_522_496),
    ("70B", "BF16", 141_107_412_992),
    ("405B", "BF16", 811_706_777_600),
    ("8B", "Q8_0", 8_540_770_848),
    ("70B", "Q8_0", 74.98e9),
    ("405B", "Q8_0", 431e9),
    ("8B", "Q4_K_M", 4.92e9),
    ("70B", "Q4_K_M", 42.52e9),
    ("405B", "Q4_K_M", 245.7e9),
    ("8B", "FP8", 9_081_280_648),
    ("70B", "FP8", 72.7e9),
    ("405B", "FP8", 410e9),
]


def predicted(size: str, quant: str) -> int:
    spec = spec_from_config(CONFIGS[size], f"Llama-3.1-{size}")
    if quant in ("Q8_0", "Q4_K_M"):
        return mem.gguf_file_bytes(spec, quant)
    return mem.safetensors_weights_bytes(spec, quant)


@pytest.mark.parametrize(("size", "quant", "published"), PUBLISHED)
def test_artifact_size_within_3_percent_of_published(size, quant, published):
    ours = predicted(size, quant)
    assert abs(ours - published) / published < 0.03, (size, quant, ours, published)


def test_bf16_sizes_are_exact():
    # 2 bytes per parameter: the published index totals, to the byte.
    assert predicted("8B", "BF16") == 16_060_522_496
    assert predicted("70B", "BF16") == 141_107_412_992


def test_q4_k_m_mix_matches_llama_cpp_rules_for_llama_8b():
    spec = spec_from_config(LLAMA31_8B, "8B")
    types = {t.name: t.ggml_type for t in mem.gguf_tensors(spec, "Q4_K_M")}
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["rope_freqs.weight"] == "F32"
    # use_more_bits(i, 32): layers 0-3, 28-31 and every third in between (6, 9, ...).
    six_k = sorted(i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K")
    assert six_k == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert types["blk.4.attn_v.weight"] == "Q4_K"
    assert types["blk.4.attn_q.weight"] == "Q4_K"


def test_70b_attn_v_is_bumped_to_q5_k():
    spec = spec_from_config(LLAMA31_70B, "70B")
    types = {t.name: t.ggml_type for t in mem.gguf_tensors(spec, "Q4_K_M")}
    # "In the 70B model we have 8 heads sharing the same attn_v weights": Q4_K -> Q5_K.
    assert types["blk.11.attn_v.weight"] == "Q5_K"  # not a use_more_bits layer of 80
    assert types["blk.12.attn_v.weight"] == "Q6_K"  # (12 - 10) % 3 == 2
    assert types["blk.0.attn_v.weight"] == "Q6_K"
    spec_405 = spec_from_config(LLAMA31_405B, "405B")
    types_405 = {t.name: t.ggml_type for t in mem.gguf_tensors(spec_405, "Q4_K_M")}
    assert types_405["blk.18.attn_v.weight"] == "Q4_K"  # no bump outside LLM_TYPE_70B


def test_rows_not_multiple_of_256_fall_back_like_llama_cpp():
    ctx = QuantContext("Q4_K_M", n_layer=30, n_gqa=3, is_llama_70b=False, has_output=False)
    # SmolLM2: hidden 576. Q4_K needs 256-wide rows -> Q5_0; Q6_K -> Q8_0.
    assert tensor_type("attn_q", 5, (576, 576), ctx) == "Q5_0"
    assert tensor_type("attn_v", 0, (192, 576), ctx) == "Q8_0"
    # Tied embeddings act as the output head: row 576 is not a Q4_K multiple -> Q8_0.
    assert tensor_type("token_embd", None, (49152, 576), ctx) == "Q8_0"
    # ffn_down rows are 1536 = 6 x 256 wide: K-quants stay.
    assert tensor_type("ffn_down", 5, (576, 1536), ctx) in ("Q4_K", "Q6_K")
    # A row that is not even a multiple of 32 ends in F16.
    assert tensor_type("attn_q", 5, (100, 100), ctx) == "F16"


def test_use_more_bits_matches_llama_cpp_formula():
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]


def test_type_sizes_match_gguf_py():
    gguf = pytest.importorskip("gguf")
    for name, (block, size) in GGML_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (block, size), name


def test_ftype_ids_in_formats_match_gguf_py():
    gguf = pytest.importorskip("gguf")
    from quantkit.formats.quants import GGUF_QUANTS

    for name in ("Q4_K_M", "Q8_0", "Q5_K_M", "Q3_K_M", "Q6_K", "BF16"):
        assert GGUF_QUANTS[name].ftype == gguf.LlamaFileType[f"MOSTLY_{name}"].value


def test_kv_cache_formula_reads_kv_heads_from_the_config():
    g8 = spec_from_config(LLAMA31_405B, "405B").geometry
    g16 = spec_from_config(LLAMA31_405B_KV16, "405B-kv16").geometry
    # 2 x 126 layers x 8 heads x 128 dims x 2 bytes = 516,096 bytes per token.
    assert mem.kv_cache_bytes(g8, 1) == 516_096
    assert mem.kv_cache_bytes(g16, 8192) == 2 * mem.kv_cache_bytes(g8, 8192)
    assert mem.kv_cache_bytes(g8, 1000, "q8_0") == int(516_096 / 2 * 34 / 32 * 1000)
    # 16 KV heads also mean bigger k/v projections in the weights.
    w8 = mem.safetensors_weights_bytes(spec_from_config(LLAMA31_405B, "a"), "BF16")
    w16 = mem.safetensors_weights_bytes(spec_from_config(LLAMA31_405B_KV16, "b"), "BF16")
    assert w16 - w8 == 126 * 2 * (8 * 128) * 16384 * 2


def test_llama_70b_kv_cache_at_8k():
    g = spec_from_config(LLAMA31_70B, "70B").geometry
    assert mem.kv_cache_bytes(g, 8192) == 2_684_354_560  # 2.5 GiB: 320 KiB per token


def test_compute_buffer_matches_llama_cpp_for_llama3_8b():
    # llama.cpp (CUDA, no flash attention) reports 258.50 MiB at n_ctx 2048 (logits of
    # 512 tokens x 128256 vocab) and 560.00 MiB at n_ctx 8192 (32 heads of 8192 x 512
    # scores) for Llama 3 8B; both figures appear in many llama.cpp load logs.
    g = spec_from_config(LLAMA31_8B, "8B").geometry
    at_2k = mem.llama_cpp_compute_bytes(g, 2048, flash_attn=False) / mem.MIB
    at_8k = mem.llama_cpp_compute_bytes(g, 8192, flash_attn=False) / mem.MIB
    assert abs(at_2k - 258.5) / 258.5 < 0.05
    assert abs(at_8k - 560.0) / 560.0 < 0.05


def test_gptq_group_falls_back_for_576_wide_rows():
    cfg = dict(LLAMA31_8B, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
               num_attention_heads=9, num_key_value_heads=3, vocab_size=1000)  # fmt: skip
    spec = spec_from_config(cfg, "tiny")

    def packed(out_f: int, in_f: int, group: int) -> int:
        return out_f * in_f // 2 + out_f * (in_f // group) * 2 + 16

    # 576-wide inputs take groups of 64 (not 128); the 1536-wide down_proj keeps 128.
    per_layer = (
        packed(576, 576, 64) * 2  # q, o
        + packed(192, 576, 64) * 2  # k, v (3 KV heads x 64)
        + packed(1536, 576, 64) * 2  # gate, up
        + packed(576, 1536, 128)  # down
        + 2 * 576 * 2  # two norms in BF16
    )
    rest = 1000 * 576 * 2 * 2 + 576 * 2  # embeddings + untied lm_head + final norm
    assert mem.safetensors_weights_bytes(spec, "W4A16") == 2 * per_layer + rest
