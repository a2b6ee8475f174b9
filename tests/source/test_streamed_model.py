"""The layer-streamed model computes what transformers' whole-model load computes, bit for bit,
with at most one decoder layer in memory at a time."""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from support.logits import IDS, streamed_logits, whole_model_logits

from quantkit.source.streamed_model import StreamedLayer, StreamedModelError, open_streamed


@pytest.fixture(scope="module")
def llama31_fp8(llama31_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from quantkit.backends.safetensors.backend import make_safetensors
    from quantkit.source.model import load_source

    out = tmp_path_factory.mktemp("fp8")
    make_safetensors(load_source(llama31_model), "fp8", "FP8_DYNAMIC", out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fixture", ["llama31_model", "qwen3_model", "llama31_fp8"])
def test_streamed_logits_are_transformers_logits(
    fixture: str, dtype: str, request: pytest.FixtureRequest
) -> None:
    """BF16 sources (Llama-3.1 with its two shards, Qwen3 with q/k norms) and FP8_DYNAMIC
    (whose activations are quantized per token at run time): the same bits. Packed INT4
    GPTQ: tests/backends/safetensors/test_compressed.py."""
    folder = request.getfixturevalue(fixture)
    assert torch.equal(streamed_logits(folder, dtype), whole_model_logits(folder, dtype))


def test_a_float32_pass_keeps_the_vocabulary_matrices_as_file_views(demo_model: Path) -> None:
    """float32 over a BF16 folder (the evaluation below 2B parameters): the embeddings and
    the tied head stay one BF16 view of the file, widened where used, not a float32 copy
    of 128k-row matrices; the logits are still transformers' bit for bit."""
    streamed = open_streamed(demo_model, dtype="float32")
    try:
        embed = streamed.model.get_input_embeddings()
        head = streamed.model.get_output_embeddings()
        assert embed.weight.dtype == torch.bfloat16 and head.weight is embed.weight
        vocab_sized = embed.weight.numel()
        assert all(t.numel() < vocab_sized for t in streamed.model.parameters())
    finally:
        streamed.close()
    assert torch.equal(streamed_logits(demo_model, "float32"),
                       whole_model_logits(demo_model, "float32"))  # fmt: skip


def test_a_large_head_is_widened_a_slice_at_a_time(monkeypatch) -> None:
    """Past runtime.memory.WHOLE_HEAD_BYTES (an 8B head in float32) the head is widened a
    slice of rows at a time: the same logits to float32's rounding, at most a slice widened
    at once."""
    from quantkit.runtime import memory
    from quantkit.source.streamed_model import WidenedHead

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 64, generator=generator).to(torch.bfloat16)
    hidden = torch.randn(2, 5, 64, generator=generator)
    whole = WidenedHead(weight, torch.float32)(hidden)
    widened: list[int] = []
    original_to = torch.Tensor.to

    def watched_to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        if self.dtype == torch.bfloat16 and out.dtype == torch.float32:
            widened.append(out.shape[0])
        return out

    monkeypatch.setattr(memory, "WHOLE_HEAD_BYTES", 64 * 4 * 100)
    monkeypatch.setattr(memory, "HEAD_SLICE_BYTES", 64 * 4 * 300)
    monkeypatch.setattr(torch.Tensor, "to", watched_to)
    sliced = WidenedHead(weight, torch.float32)(hidden)
    monkeypatch.undo()
    assert widened == [300, 300, 300, 100]
    assert sliced.shape == whole.shape == (2, 5, 1000)
    exact = hidden.double() @ weight.double().T
    assert torch.allclose(sliced.double(), exact, rtol=0, atol=1e-4)
    assert torch.allclose(sliced, whole, rtol=1e-5, atol=1e-5)


def test_one_layer_in_memory_at_a_time(llama31_fp8: Path) -> None:
    """Each layer is built when it runs and gone before the next is built."""
    streamed = open_streamed(llama31_fp8, "float32")
    alive: list[weakref.ref] = []
    most = 0
    original = StreamedLayer.materialize

    def counting(self):
        nonlocal most
        gc.collect()
        most = max(most, sum(ref() is not None for ref in alive))
        layer = original(self)
        alive.append(weakref.ref(layer))
        return layer

    StreamedLayer.materialize = counting
    try:
        with torch.inference_mode():
            streamed.model(input_ids=IDS, use_cache=False)
    finally:
        StreamedLayer.materialize = original
    assert len(alive) == len(streamed.layers) == 4
    assert most == 0  # no earlier layer was alive when the next one was built
    assert all(p.device.type == "cpu" for p in streamed.model.parameters())  # no meta left over


def test_generation_spills_decompressed_layers_once(llama31_fp8: Path, tmp_path: Path) -> None:
    """Greedy tokens are the same whether each token decompresses every layer again or reads
    the layers decompressed once into the spill folder; only compressed layers spill."""
    prompt = IDS[:1, :20]
    outputs = []
    built = []
    original = StreamedLayer.materialize
    StreamedLayer.materialize = lambda self: built.append(self.prefix) or original(self)
    try:
        for spill in (None, tmp_path):
            streamed = open_streamed(llama31_fp8)
            assert streamed.compressed()
            streamed.spill_to(spill)
            with torch.inference_mode():
                outputs.append(streamed.model.generate(
                    input_ids=prompt, max_new_tokens=5, do_sample=False, pad_token_id=0
                ))  # fmt: skip
            streamed.close()
    finally:
        StreamedLayer.materialize = original
    assert torch.equal(*outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"model.layers.{i}.safetensors" for i in range(4)
    ]
    # Without the spill, each of the 5 forward passes built the 4 layers from the FP8 shards;
    # with it, later passes read the spilled layers (prefix "": their own files).
    assert built[:20] == [f"model.layers.{i}" for i in range(4)] * 5
    assert built[20:24] == [f"model.layers.{i}" for i in range(4)]
    assert built[24:] == [""] * 16


def test_keep_bytes_keeps_the_first_layers_that_fit(llama31_model: Path) -> None:
    # q and o 512x512, k and v 128x512, gate, up and down 1024x512, two norms; in float32
    per_layer = (2 * 512 * 512 + 2 * 128 * 512 + 3 * 1024 * 512 + 2 * 512) * 4
    streamed = open_streamed(llama31_model, "float32", keep_bytes=2 * per_layer + 1)
    assert streamed.layer_bytes() == 4 * per_layer
    assert [layer.keep for layer in streamed.layers] == [True, True, False, False]


def test_a_missing_layer_tensor_is_named(llama31_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(llama31_model, folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].pop("model.layers.2.mlp.up_proj.weight")
    index_path.write_text(json.dumps(index))
    streamed = open_streamed(folder, "float32")
    missing = "no tensor model.layers.2.mlp.up_proj.weight"
    with pytest.raises(StreamedModelError, match=missing), torch.inference_mode():
        streamed.model(input_ids=IDS, use_cache=False)


def test_a_tensor_of_the_wrong_shape_is_named(llama31_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(llama31_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 2048
    (folder / "config.json").write_text(json.dumps(config))
    streamed = open_streamed(folder, "float32")
    wrong = r"mlp.gate_proj.weight has shape \(1024, 512\)"
    with pytest.raises(StreamedModelError, match=wrong), torch.inference_mode():
        streamed.model(input_ids=IDS, use_cache=False)


def test_the_evaluation_engine_batches_chunks_through_the_streamed_layers(
    llama31_model: Path,
) -> None:
    """TransformersEngine puts a batch of chunks through each layer at once and applies the
    head to the scored rows only: the logits are the whole model's, chunk by chunk."""
    from quantkit.evaluation.engines import TransformersEngine
    from quantkit.runtime.memory import ACTIVATION_BUDGET

    engine = TransformersEngine(llama31_model, dtype="float32", n_ctx=48)
    engine.load()
    # 48 tokens x (6 x 512 + 3 x 1024 + 48) float32 values a chunk: the cap of 16 binds
    assert engine.batch_chunks(23) == 16
    engine.n_ctx = 4096  # 4096 x 10240 x 4 bytes = 168 MB a chunk: 6 fit in 1 GiB
    assert ACTIVATION_BUDGET == 1 << 30 and engine.batch_chunks(2047) == 6
    engine.n_ctx = 48
    chunks = [IDS[0].tolist(), IDS[1].tolist(), IDS[0].flip(0).tolist()]
    rows = slice(24, 47)
    batched = list(engine.logits_batch(chunks, rows))
    engine.close()
    whole = _whole_model_logits_of(llama31_model, chunks)
    for got, want in zip(batched, whole, strict=True):
        np.testing.assert_allclose(got, want[rows].numpy(), rtol=0, atol=1e-4)


def test_a_compressed_model_batches_half_the_chunks(llama31_model: Path, llama31_fp8: Path) -> None:
    """FP8_DYNAMIC quantizes each Linear's input on the fly (a copy of the activations): the
    same budget holds half the chunks."""
    from quantkit.evaluation.engines import TransformersEngine

    batches = {}
    for folder in (llama31_model, llama31_fp8):
        engine = TransformersEngine(folder, dtype="float32", n_ctx=4096)
        engine.load()
        batches[folder.name] = engine.batch_chunks(2047), engine._model.compressed()
        engine.close()
    assert batches == {llama31_model.name: (6, False), llama31_fp8.name: (3, True)}


def _whole_model_logits_of(folder: Path, chunks: list[list[int]]) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in chunks]


@pytest.mark.parametrize("room", [True, False])
def test_the_generation_check_spills_beside_the_folder_and_cleans_up(
    llama31_fp8: Path, room: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spill folder sits beside the artifact and is gone afterwards; without room on that
    disk the check still runs, decompressing as it goes."""
    import shutil as shutil_module

    from quantkit.inspection import generation

    spilled: list[Path] = []
    original = StreamedLayer._spill

    def spill(self, layer) -> None:
        spilled.append(self.spill)
        original(self, layer)

    monkeypatch.setattr(StreamedLayer, "_spill", spill)
    monkeypatch.setattr(generation, "GENERATION_KEEP_BYTES", 0)  # the fixture would fit
    if not room:
        full = shutil_module.disk_usage(llama31_fp8)._replace(free=0)
        monkeypatch.setattr(generation.shutil, "disk_usage", lambda path: full)
    check = generation.generation_check(llama31_fp8, max_new_tokens=3)
    assert "within 3 tokens" in check.evidence  # random weights never stop: but it ran
    if room:
        assert len(spilled) == 4 and {p.parent for p in spilled} == {llama31_fp8.parent}
    else:
        assert spilled == []
    assert not list(llama31_fp8.parent.glob(".quantkit-layers-*"))
