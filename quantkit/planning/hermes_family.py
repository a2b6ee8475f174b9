"""The Hermes family's real config.json values, so the planner can offer a smaller sibling
that fits ("use the 8B or the 14B on this card") without touching the network.

Sources: the config.json files of meta-llama/Llama-3.1-8B-Instruct, -70B-Instruct and
-405B-Instruct (Hermes 3 and the Llama-based Hermes 4 keep these shapes), and
Qwen/Qwen3-14B (the base of Hermes 4 14B). Only architecture fields are copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _llama31(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int = 8):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": dict(_LLAMA31_ROPE),
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


LLAMA31_8B = _llama31(4096, 14336, 32, 32)
LLAMA31_70B = _llama31(8192, 28672, 80, 64)
LLAMA31_405B = _llama31(16384, 53248, 126, 128)
# The first 405B upload (and some copies of it) carry 16 KV heads; read the config.
LLAMA31_405B_KV16 = _llama31(16384, 53248, 126, 128, kv_heads=16)
QWEN3_14B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 5120,
    "intermediate_size": 17408,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    size: str  # "8B", "14B", ...
    config: dict[str, Any]


HERMES_FAMILY: tuple[KnownModel, ...] = (
    KnownModel("NousResearch/Hermes-3-Llama-3.1-8B", "8B", LLAMA31_8B),
    KnownModel("NousResearch/Hermes-4-14B", "14B", QWEN3_14B),
    KnownModel("NousResearch/Hermes-4-70B", "70B", LLAMA31_70B),
    KnownModel("NousResearch/Hermes-3-Llama-3.1-70B", "70B", LLAMA31_70B),
    KnownModel("NousResearch/Hermes-4-405B", "405B", LLAMA31_405B),
    KnownModel("NousResearch/Hermes-3-Llama-3.1-405B", "405B", LLAMA31_405B),
)
