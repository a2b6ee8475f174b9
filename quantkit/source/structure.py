"""Is a source model whole? Every tensor its architecture needs, in the shape its config
implies; nothing the architecture does not define; an index that matches its shards.

Checked from the safetensors headers before any weight is read, so a broken download or a
hand-edited config.json fails in seconds, naming what is wrong, rather than deep inside a
backend or, worse, as an artifact that loads and talks nonsense (transformers fills a
missing weight with random values and only warns; llama.cpp's converter writes whatever
tensors it finds).

`derived_tensors` is the one list of what a Llama / Qwen3 config implies: the planner sizes
config-only models with it and `check_structure` compares a real inventory against it.
"""

from __future__ import annotations

import re
from collections import Counter
from math import prod

from ..errors import SourceModelError
from ..formats.safetensors_index import DTYPE_BITS, TensorInfo, index_weight_map
from .model import SUPPORTED_ARCHITECTURES, ModelGeometry, SourceModel

DERIVED_FILE = "(derived)"  # the shard of a tensor known from the config alone

# Buffers some exports carry next to the parameters; every converter drops them (rotary
# frequencies are recomputed from the config at load time), so they are not "unexpected".
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_SHOWN = 6  # names listed per problem; the rest are counted


def derived_tensors(geometry: ModelGeometry, dtype: str = "BF16") -> tuple[TensorInfo, ...]:
    """The Llama / Qwen3 parameter list (transformers names and shapes) from the geometry."""
    g = geometry
    q_dim, kv_dim = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (g.vocab_size, g.hidden_size))
    ]
    for i in range(g.num_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (g.hidden_size,)),
            (p + "self_attn.q_proj.weight", (q_dim, g.hidden_size)),
            (p + "self_attn.k_proj.weight", (kv_dim, g.hidden_size)),
            (p + "self_attn.v_proj.weight", (kv_dim, g.hidden_size)),
            (p + "self_attn.o_proj.weight", (g.hidden_size, q_dim)),
            (p + "post_attention_layernorm.weight", (g.hidden_size,)),
            (p + "mlp.gate_proj.weight", (g.intermediate_size, g.hidden_size)),
            (p + "mlp.up_proj.weight", (g.intermediate_size, g.hidden_size)),
            (p + "mlp.down_proj.weight", (g.hidden_size, g.intermediate_size)),
        ]
        if g.model_type == "qwen3":  # Qwen3 normalizes q and k per head
            shapes += [
                (p + "self_attn.q_norm.weight", (g.head_dim,)),
                (p + "self_attn.k_norm.weight", (g.head_dim,)),
            ]
    shapes.append(("model.norm.weight", (g.hidden_size,)))
    if not g.tie_word_embeddings:
        shapes.append(("lm_head.weight", (g.vocab_size, g.hidden_size)))
    bits = DTYPE_BITS[dtype]
    return tuple(TensorInfo(n, dtype, s, DERIVED_FILE, prod(s) * bits // 8) for n, s in shapes)


def expected_shapes(source: SourceModel) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor the source's config implies, biases included when
    config.json turns them on (`attention_bias`, `mlp_bias`: one value per output row)."""
    cfg = source.config.get("text_config", source.config)
    biased = (_ATTENTION if cfg.get("attention_bias") else ()) + (
        _MLP if cfg.get("mlp_bias") else ()
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for t in derived_tensors(source.geometry):
        shapes[t.name] = t.shape
        if t.name.endswith(tuple(f".{proj}.weight" for proj in biased)):
            shapes[t.name.removesuffix(".weight") + ".bias"] = t.shape[:1]
    return shapes


def check_structure(source: SourceModel) -> None:
    """SourceModelError unless the source's shards hold exactly the tensors its config
    implies, with those shapes, as its index says. Architectures quantkit does not convert
    are not checked (nothing says what they need), nor are already-quantized checkpoints
    (packed weights and scales; the backends refuse those with their own message)."""
    duplicates = [n for n, c in Counter(t.name for t in source.tensors).items() if c > 1]
    if duplicates:
        raise _error(source, f"tensors stored in two shards: {_names(duplicates)}")
    check_index(source)
    if source.geometry.architecture not in SUPPORTED_ARCHITECTURES:
        return
    if source.config.get("quantization_config"):
        return
    expected = expected_shapes(source)
    found = {t.name: t for t in source.tensors if not t.name.endswith(IGNORED_SUFFIXES)}
    problems = []
    missing = [n for n in expected if n not in found]
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    wrong = [
        f"{n} is {list(found[n].shape)}, config.json implies {list(shape)}"
        for n, shape in expected.items()
        if n in found and found[n].shape != shape
    ]
    if wrong:
        more = f" (and {len(wrong) - _SHOWN} more)" if len(wrong) > _SHOWN else ""
        problems.append(f"wrong shapes: {'; '.join(wrong[:_SHOWN])}{more}")
    unexpected = [n for n in found if n not in expected]
    if source.geometry.tie_word_embeddings and "lm_head.weight" in unexpected:
        # Which head would run is then up to the loader: transformers ties it to the
        # embedding, llama.cpp uses the stored one. Refuse rather than guess.
        unexpected.remove("lm_head.weight")
        problems.append(
            "lm_head.weight is stored, but config.json says tie_word_embeddings: true "
            "(set it to false if the model has a separate output head)"
        )
    if unexpected:
        problems.append(
            f"unexpected tensors (not part of {source.geometry.architecture}): {_names(unexpected)}"
        )
    if problems:
        raise _error(source, ". ".join(problems) + _layer_note(source, found))


def check_index(source: SourceModel) -> None:
    """model.safetensors.index.json and the shards agree: every tensor the index lists is
    in the shard it names, and every tensor of a shard is listed. (Missing shard files are
    refused earlier, when the inventory is read.)"""
    index = source.path / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map = index_weight_map(index)
    where = {t.name: t.file for t in source.tensors}
    elsewhere = [
        f"{n} (index: {f}, found in {where[n]})"
        for n, f in weight_map.items()
        if n in where and where[n] != f
    ]
    absent = [f"{n} (in {f})" for n, f in weight_map.items() if n not in where]
    unlisted = [f"{n} (in {f})" for n, f in where.items() if n not in weight_map]
    problems = []
    if absent:
        problems.append(f"tensors the index lists but no shard holds: {_names(absent)}")
    if elsewhere:
        problems.append(f"tensors in another shard than the index says: {_names(elsewhere)}")
    if unlisted:
        problems.append(f"tensors in a shard but not in the index: {_names(unlisted)}")
    if problems:
        raise SourceModelError(
            f"{index} does not match the shards: {'. '.join(problems)}.",
            hint="The download is incomplete or mixes two versions of the model; download "
            "all shards and the index again.",
        )


def _layer_note(source: SourceModel, found: dict[str, TensorInfo]) -> str:
    """When the shards hold another number of layers than config.json says, say so: the
    most common cause of a long list of missing or unexpected layer tensors."""
    layers = {int(m.group(1)) for n in found if (m := _LAYER.match(n))}
    count = max(layers) + 1 if layers else 0
    if count == source.geometry.num_layers:
        return ""
    return (
        f". The shards hold {count} layers, config.json says num_hidden_layers: "
        f"{source.geometry.num_layers}"
    )


def _names(names: list[str]) -> str:
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _error(source: SourceModel, what: str) -> SourceModelError:
    g = source.geometry
    return SourceModelError(
        f"{source.path} does not hold the {g.architecture or 'model'} its config.json "
        f"describes ({g.num_layers} layers, hidden {g.hidden_size}, {g.num_heads} heads, "
        f"{g.num_kv_heads} KV heads of {g.head_dim}, vocabulary {g.vocab_size}): {what}.",
        hint="The download is incomplete or config.json does not belong to these weights; "
        "download the model again, or restore config.json from the original.",
    )
