"""FP8_DYNAMIC tensor by tensor (backends/safetensors/model_free.py) writes the files
llmcompressor's `model_free_ptq` writes from the same source, byte for byte, and leaves
nothing behind when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.backends.safetensors import compressed, model_free
from quantkit.backends.safetensors.export import INDEX_NAME
from quantkit.backends.safetensors.model_free import STAGE, quantize_tensor_by_tensor
from quantkit.runtime import memory
from quantkit.source.model import load_source

pytestmark = pytest.mark.slow  # imports llmcompressor and quantizes a model twice


def _config(source):
    recipe = compressed.build_recipe("FP8_DYNAMIC")
    return compressed.model_free_config(source, recipe.resolve_quantization_config())


def _model_free_ptq(model: Path, out: Path, config) -> None:
    """llmcompressor's own run over the source's weights, index and config.json."""
    from llmcompressor import model_free_ptq

    staging = out.with_name(out.name + "-source")
    staging.mkdir()
    for path in model.iterdir():
        if path.suffix == ".safetensors" or path.name in ("config.json", INDEX_NAME):
            (staging / path.name).symlink_to(path.resolve())
    model_free_ptq(str(staging), str(out), config=config)


@pytest.mark.parametrize("blocks", ["whole tensors", "blocks of rows"])
@pytest.mark.parametrize("model", ["llama31_model", "demo_model"])
def test_files_are_model_free_ptqs(
    model: str, blocks: str, request: pytest.FixtureRequest, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The Llama-3.1-shaped fixture: two shards with an index, an untied lm_head; the demo:
    one file, no index, tied embeddings. Every file the two write is the same, also when
    the weights are read and quantized a block of rows at a time (blocks of ~300 KB here,
    so that the MLP weights and the embeddings split, the last block shorter)."""
    folder = request.getfixturevalue(model)
    source = load_source(folder)
    split: set[str] = set()
    if blocks == "blocks of rows":
        monkeypatch.setattr(memory, "FP8_BLOCK_BYTES", 300_000)
        row_blocks = model_free._row_blocks

        def spy(converter, info):
            made = row_blocks(converter, info)
            if len(made) > 1:
                split.add(info.name.rsplit(".", 2)[-2])
            return made

        monkeypatch.setattr(model_free, "_row_blocks", spy)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    stages = set()
    quantize_tensor_by_tensor(source, _config(source), ours,
                              progress=lambda stage, done, total: stages.add(stage))  # fmt: skip
    _model_free_ptq(folder, theirs, _config(source))
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert INDEX_NAME in names
    different = [n for n in names if (ours / n).read_bytes() != (theirs / n).read_bytes()]
    assert not different, different
    assert stages == {STAGE}
    if blocks == "blocks of rows":  # quantized and passed-through weights both split
        assert {"gate_proj", "down_proj", "embed_tokens"} <= split, split


def test_interrupted_leaves_no_shard(llama31_model: Path, tmp_path: Path) -> None:
    """Stopped in the second shard (Ctrl-C), the first, finished shard goes too."""
    source = load_source(llama31_model)
    assert len({t.file for t in source.tensors}) == 2

    def interrupt(stage: str, done: int, total: int) -> None:
        if done == total - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_tensor_by_tensor(source, _config(source), tmp_path, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_the_layout_takes_tensors_in_blocks_of_rows(tmp_path: Path) -> None:
    """ShardLayout.write puts each block of rows at its place, in any order; a tensor is
    written once its rows are all in; scalars and empty tensors are one block; a block of
    the wrong shape is refused. The file loads in safetensors with the values written."""
    import torch
    from safetensors.torch import load_file

    from quantkit.backends.safetensors.model_free import ShardLayout
    from quantkit.errors import ConversionError

    def meta(shape, dtype=torch.bfloat16):
        return torch.empty(shape, dtype=dtype, device="meta")

    layout = ShardLayout({"empty": meta((0, 4)), "scalar": meta((), torch.float32),
                          "rows": meta((5, 2))})  # fmt: skip
    path = tmp_path / "shard.safetensors"
    with path.open("wb") as fh:
        fh.write(layout.header)
        fh.truncate(layout.size)
        fd = fh.fileno()
        layout.write(fd, "rows", torch.full((2, 2), 2.0, dtype=torch.bfloat16), slice(3, 5))
        with pytest.raises(ConversionError, match="rows 0-3"):
            layout.write(fd, "rows", torch.ones((2, 2), dtype=torch.bfloat16), slice(0, 3))
        assert layout.missing() == ["empty", "rows", "scalar"]
        layout.write(fd, "rows", torch.ones((3, 2), dtype=torch.bfloat16), slice(0, 3))
        layout.write(fd, "scalar", torch.tensor(7.0))
        layout.write(fd, "empty", torch.empty((0, 4), dtype=torch.bfloat16))
        assert layout.missing() == []
    loaded = load_file(path)
    assert loaded["rows"].tolist() == [[1, 1]] * 3 + [[2, 2]] * 2
    assert loaded["scalar"].item() == 7.0 and loaded["empty"].shape == (0, 4)
