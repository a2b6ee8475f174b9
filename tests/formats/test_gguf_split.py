"""GGUF split in llama.cpp's format: shard names, split keys, tensors distributed by size,
sizes as planned, and llama.cpp (llama-cpp-python) loading the set from its first shard
with logits identical to the unsplit file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.gguf_reader import GGUFField, read_gguf

from quantkit.formats.gguf_names import is_shard_name, parse_shard_name, shard_name
from quantkit.formats.gguf_split import SplitError, needs_split, plan_split, split_gguf

MAX = 40_000_000  # the demo Q4_K_M GGUF is ~105 MB: three shards


def _gguf(artifact: Path) -> Path:
    return next(artifact.glob("*.gguf"))


def _raw(blob: bytes, field: GGUFField) -> bytes:
    """The key-value entry's bytes: key, type and value."""
    return blob[slice(*field.span)]


def test_shard_names_follow_llama_cpp() -> None:
    assert shard_name("m-Q4_K_M", 1, 3) == "m-Q4_K_M-00001-of-00003.gguf"
    assert is_shard_name("m-00002-of-00010.gguf")
    assert not is_shard_name("m-Q4_K_M.gguf")
    shard = parse_shard_name("m-Q4_K_M-00002-of-00003.gguf")
    assert shard is not None and (shard.stem, shard.index, shard.count) == ("m-Q4_K_M", 2, 3)
    assert [p.name for p in shard.siblings(Path("x"))] == [
        shard_name("m-Q4_K_M", i, 3) for i in (1, 2, 3)
    ]


@pytest.fixture(scope="module")
def split_set(demo_artifact_cached: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    source = _gguf(demo_artifact_cached)
    out = tmp_path_factory.mktemp("shards")
    return source, split_gguf(source, MAX, out)


@pytest.mark.slow
def test_split_writes_the_planned_shards(split_set) -> None:
    # Read with the tests' own reader: gguf-py's GGUFReader takes seconds per file.
    source, shards = split_set
    plans = plan_split(source, MAX, shards[0].parent)
    assert [p.path for p in plans] == shards
    assert [s.name for s in shards] == [shard_name(source.stem, i, 3) for i in (1, 2, 3)]
    source_blob = source.read_bytes()
    original = read_gguf(source)
    seen: dict[str, bytes] = {}
    for index, (shard, plan) in enumerate(zip(shards, plans, strict=True)):
        assert shard.stat().st_size == plan.bytes <= MAX
        shard_blob = shard.read_bytes()
        reader = read_gguf(shard)
        assert reader.fields["split.no"].contents() == index
        assert reader.fields["split.count"].contents() == 3
        assert reader.fields["split.tensors.count"].contents() == len(original.tensors)
        assert list(reader.tensors) == list(plan.tensors)
        for t in reader.tensors.values():
            seen[t.name] = bytes(t.data.tobytes())
        if index == 0:  # all metadata, byte for byte (key, type and value)
            for name, fld in original.fields.items():
                if name.startswith("GGUF."):
                    continue
                assert _raw(shard_blob, reader.fields[name]) == _raw(source_blob, fld), name
        else:
            assert "tokenizer.ggml.tokens" not in reader.fields
    # every tensor once, same type, shape and bytes
    assert list(seen) == list(original.tensors)
    for t in original.tensors.values():
        assert seen[t.name] == bytes(t.data.tobytes()), t.name
    assert not list(shards[0].parent.glob("*.partial"))


@pytest.mark.slow
def test_llama_cpp_loads_the_split_set_with_identical_logits(split_set) -> None:
    from llama_cpp import Llama

    source, shards = split_set
    text = b"<|im_start|>user\nWhat is 2+2? <think>\n</think><|im_end|>\n<|im_start|>assistant\n"

    def logits(path: Path) -> tuple[list[int], np.ndarray]:
        model = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
        try:
            tokens = model.tokenize(text, special=True)
            model.eval(tokens)
            return tokens, np.array(model.scores[: len(tokens)])
        finally:
            model.close()

    tokens_a, logits_a = logits(source)
    tokens_b, logits_b = logits(shards[0])
    assert tokens_a == tokens_b
    assert np.array_equal(logits_a, logits_b)


def test_a_file_that_fits_is_not_split(demo_artifact_cached: Path) -> None:
    source = _gguf(demo_artifact_cached)
    assert split_gguf(source, source.stat().st_size) == [source]
    assert not needs_split(source)


def test_a_shard_too_small_for_one_tensor_is_refused(demo_artifact_cached: Path, tmp_path) -> None:
    with pytest.raises(SplitError, match="does not fit"):
        split_gguf(_gguf(demo_artifact_cached), 2_000_000, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_shard_cannot_be_split_again(split_set, tmp_path: Path) -> None:
    _, shards = split_set
    with pytest.raises(SplitError, match="already a shard"):
        split_gguf(shards[0], 10_000_000, tmp_path)
