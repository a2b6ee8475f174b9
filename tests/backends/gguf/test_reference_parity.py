"""Our BF16 GGUF against llama.cpp's own convert_hf_to_gguf.py on the same model.

Tensors must match exactly (names, order-insensitive; shapes, types, bytes), and the
metadata key by key, except where quantkit's documented token-type policy decides on
purpose (quantkit/backends/gguf/vocab.py, docs/formats.md):
- the Hermes reasoning/tool tags are USER_DEFINED whatever the source marks them as;
- turn markers are CONTROL;
- EOT is written as the turn-end token (the reference writes no EOT id for these models);
- file naming/provenance keys (general.name, general.quantized_by, ...) are ours to set.

Every difference, allowed or not, is printed (`pytest -s` / `-rA`), so a run doubles as a
report of how far the two converters agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from support.gguf_compare import Difference, compare_gguf, format_differences
from support.gguf_reader import read_gguf

from quantkit.backends.gguf.export import export_gguf
from quantkit.source.model import load_source

pytestmark = [pytest.mark.slow, pytest.mark.reference]

MODELS = (
    "llama31_model",
    "llama31_model_tf4_config",
    "llama31_model_special_tags",  # Hermes tags special=True: the policy must differ
    "qwen3_model",
    "demo_model",
)

CONTROL, USER_DEFINED = 3, 4  # gguf.TokenType
HERMES_TAGS = frozenset({"<think>", "</think>", "<tool_call>", "</tool_call>",
                         "<tool_response>", "</tool_response>", "<tools>", "</tools>"})  # fmt: skip
TURN_MARKERS = frozenset({"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                          "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|im_start|>",
                          "<|im_end|>", "<|endoftext|>"})  # fmt: skip
# Naming and provenance: what the file says about who made it, not how it runs.
PROVENANCE_KEYS = frozenset({"general.name", "general.basename", "general.finetune",
                             "general.size_label", "general.version", "general.quantized_by",
                             "general.organization", "general.source.repo_url",
                             "general.source.url", "general.repo_url", "general.url"})  # fmt: skip


@dataclass(frozen=True)
class Pair:
    model: str  # fixture name
    ours: Path
    theirs: Path


def convert_both(label: str, model: Path, out: Path, reference_gguf, out_type="BF16") -> Pair:
    """Ours made here; theirs from the fixture cache (the reference converter's output for
    these same inputs: tests/support/models.py, reference_gguf)."""
    ours = out / f"ours-{out_type}.gguf"
    export_gguf(load_source(model), ours, out_type=out_type)
    return Pair(label, ours, reference_gguf(model, out_type.lower()))


@pytest.fixture(scope="module", params=MODELS)
def gguf_pair(request, reference_gguf, tmp_path_factory) -> Pair:
    model = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp(request.param)
    return convert_both(request.param, model, out, reference_gguf)


@pytest.fixture(scope="module")
def differences(gguf_pair: Pair) -> list[Difference]:
    diffs = compare_gguf(gguf_pair.ours, gguf_pair.theirs)
    print(f"\n{gguf_pair.model}: ours vs reference\n{format_differences(diffs)}")
    return diffs


def is_policy_difference(diff: Difference, ours_eos: int | None) -> bool:
    """True for the differences our documented policy makes on purpose."""
    if diff.kind != "metadata":
        return False
    if diff.key in PROVENANCE_KEYS:
        return True
    if diff.key == "tokenizer.ggml.token_type" and diff.aspect == "element":
        return (diff.note in HERMES_TAGS and diff.ours == USER_DEFINED) or (
            diff.note in TURN_MARKERS and diff.ours == CONTROL
        )
    if diff.key == "tokenizer.ggml.eot_token_id" and diff.aspect == "missing_in_theirs":
        return diff.ours == ours_eos
    return False


def _ours_eos(ours: Path) -> int | None:
    field = read_gguf(ours).fields.get("tokenizer.ggml.eos_token_id")
    return None if field is None else field.contents()


def test_tensors_identical(differences: list[Difference]) -> None:
    tensor_diffs = [d for d in differences if d.kind == "tensor"]
    assert not tensor_diffs, format_differences(tensor_diffs)


def test_metadata_matches_but_for_policy(differences: list[Difference], gguf_pair: Pair) -> None:
    eos = _ours_eos(gguf_pair.ours)
    unexplained = [
        d for d in differences if d.kind == "metadata" and not is_policy_difference(d, eos)
    ]
    assert not unexplained, format_differences(unexplained)


def test_token_type_differences_are_exactly_the_policy_ones(
    differences: list[Difference], gguf_pair: Pair
) -> None:
    """Where the source marks the Hermes tags special, the reference types them CONTROL
    and we USER_DEFINED: exactly those 8 differences. Elsewhere the two agree."""
    token_diffs = {
        d.note: (d.ours, d.theirs) for d in differences if d.key == "tokenizer.ggml.token_type"
    }
    if gguf_pair.model == "llama31_model_special_tags":
        assert token_diffs == dict.fromkeys(HERMES_TAGS, (USER_DEFINED, CONTROL))
    else:
        assert token_diffs == {}


def test_ours_applies_token_policy(gguf_pair: Pair) -> None:
    """Independently of the reference: in our file every Hermes tag present is
    USER_DEFINED and every turn marker present is CONTROL."""
    fields = read_gguf(gguf_pair.ours).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    kinds = {tok: kind for tok, kind in zip(tokens, types, strict=True)}
    assert kinds.keys() >= HERMES_TAGS, "the fixture models all carry the Hermes tags"
    assert {t: kinds[t] for t in HERMES_TAGS} == dict.fromkeys(HERMES_TAGS, USER_DEFINED)
    markers = TURN_MARKERS & kinds.keys()
    assert markers, "no turn marker found"
    assert {t: kinds[t] for t in markers} == dict.fromkeys(markers, CONTROL)


@pytest.mark.parametrize("out_type", ["Q8_0", "F16"])
def test_other_direct_types_match_reference(
    out_type: str, llama31_model: Path, reference_gguf, tmp_path: Path
) -> None:
    """Q8_0 (gguf-py's quantizer) and F16 are byte-identical to the reference too."""
    pair = convert_both("llama31_model", llama31_model, tmp_path, reference_gguf, out_type)
    diffs = compare_gguf(pair.ours, pair.theirs)
    eos = _ours_eos(pair.ours)
    unexplained = [d for d in diffs if not is_policy_difference(d, eos)]
    assert not unexplained, format_differences(unexplained)
