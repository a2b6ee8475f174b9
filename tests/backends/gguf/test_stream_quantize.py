"""llama.cpp types quantized straight from the shards (quantkit.backends.gguf.stream_quantize):
the file is byte for byte what llama.cpp's own quantizer makes from the BF16 GGUF, no BF16
file is written on the way, and bad input leaves no file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.gguf_reader import read_gguf_tensors

from quantkit.backends.gguf.backend import make_gguf
from quantkit.backends.gguf.export import plan_export
from quantkit.backends.gguf.imatrix.matrix import Imatrix, ImatrixEntry, load_imatrix
from quantkit.backends.gguf.imatrix.request import ImatrixRequest
from quantkit.backends.gguf.quantize import llama_tensor_types, quantize_gguf
from quantkit.backends.gguf.stream_quantize import quantize_from_shards, write_sparse_bf16
from quantkit.errors import ImatrixError
from quantkit.source.model import load_source


def random_imatrix(bf16: Path, seed: int = 0) -> Imatrix:
    """Positive importance for every 2-D tensor but the token embeddings (as llama-imatrix
    collects them), with a dataset and chunk count for the metadata."""
    rng = np.random.default_rng(seed)
    entries = {
        t.name: ImatrixEntry(rng.random((1, t.shape[-1]), dtype=np.float32) * 10,
                             np.array([64.0]))
        for t in read_gguf_tensors(bf16).values()  # the tests' reader: GGUFReader takes ~10 s
        if len(t.shape) > 1 and t.name != "token_embd.weight"
    }  # fmt: skip
    return Imatrix(entries, datasets=("calibration.jsonl",), chunk_count=3, chunk_size=512)


def llama_cpp_quantize(
    bf16: Path, folder: Path, quant: str, imatrix: Imatrix | None, label: str = "m.imatrix"
) -> bytes:
    quantize_gguf(bf16, folder / "ref.gguf", quant, imatrix=imatrix, imatrix_file=label)
    return (folder / "ref.gguf").read_bytes()


# The demo (trained weights, rows of 576: IQ2_XS falls back to IQ4_NL, Q4_0, Q2_K and Q8_0
# beside its IQ2_XS tensors) with 8 of its 30 layers: each tensor is quantized on its own,
# so the file's bytes hold or fail tensor by tensor, and every type of the mix is in the
# first 8 layers; the i-quant searches over all 30 took ~35 s each way on 2 cores.
@pytest.mark.parametrize(
    ("model", "quant", "with_imatrix"),
    [pytest.param("llama31_model", "Q4_K_M", True, marks=pytest.mark.slow),
     ("qwen3_model", "Q3_K_S", False),  # the fast lane's case: 12 s
     pytest.param("demo_model_8_layers", "IQ2_XS", True, marks=pytest.mark.slow)],
    ids=["llama31-Q4_K_M-imatrix", "qwen3-Q3_K_S", "demo-IQ2_XS-imatrix"],
)  # fmt: skip
def test_streamed_file_is_llama_cpps_byte_for_byte(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    model: str,
    quant: str,
    with_imatrix: bool,
    bf16_gguf,
) -> None:
    # The reference: our BF16 GGUF (export_gguf's, made once a session), then
    # llama_model_quantize on it (llama-quantize's call).
    source = load_source(request.getfixturevalue(model))
    bf16 = bf16_gguf(source.path)
    imatrix = random_imatrix(bf16) if with_imatrix else None  # the names of the same export
    expected = llama_cpp_quantize(bf16, tmp_path, quant, imatrix)
    streamed = tmp_path / "streamed" / "m.gguf"
    streamed.parent.mkdir()
    quantize_from_shards(source, streamed, quant, imatrix=imatrix, imatrix_file="m.imatrix",
                         threads=2)  # fmt: skip
    assert streamed.read_bytes() == expected
    assert [p.name for p in streamed.parent.iterdir()] == ["m.gguf"]  # the sparse file is gone
    types = {t.tensor_type.name for t in read_gguf_tensors(streamed).values()}
    assert types - {"F32"}, "nothing was quantized"


def test_dry_run_types_need_no_weight_bytes(llama31_model: Path, tmp_path: Path) -> None:
    source = load_source(llama31_model)
    plan = plan_export(source)
    sparse = tmp_path / "sparse.gguf"
    write_sparse_bf16(source, plan, sparse)
    size = sparse.stat().st_size
    assert size > sum(job.nbytes for job in plan.jobs)  # as long as the BF16 file...
    assert sparse.stat().st_blocks * 512 < size / 4  # ...but a hole where the weights are
    types = llama_tensor_types(sparse, "Q4_K_M")
    assert set(types) == {job.gguf_name for job in plan.jobs}
    # llama.cpp's Q4_K_M mix: Q6_K for the output, some attn_v and ffn_down; Q4_K else.
    assert types["output.weight"] == "Q6_K" and types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_a_type_that_needs_an_imatrix_fails_before_writing(demo_model: Path, tmp_path: Path):
    out = tmp_path / "m.gguf"
    with pytest.raises(ImatrixError, match="needs an importance matrix"):
        quantize_from_shards(load_source(demo_model), out, "IQ2_XS")
    assert list(tmp_path.iterdir()) == []


def test_an_imatrix_of_another_model_fails_and_leaves_no_file(
    demo_model: Path, bf16_gguf, tmp_path: Path
) -> None:
    source = load_source(demo_model)
    imatrix = random_imatrix(bf16_gguf(demo_model))  # the names of the demo's BF16 export
    name = "blk.0.attn_q.weight"
    imatrix.entries[name] = ImatrixEntry(np.ones((1, 7), dtype=np.float32), np.array([1.0]))
    with pytest.raises(ImatrixError, match=f"7 values for {name}"):
        quantize_from_shards(source, tmp_path / "m.gguf", "Q4_K_M", imatrix=imatrix)
    assert list(tmp_path.iterdir()) == []


# On the demo's first 8 layers, as the IQ2_XS case above (and its BF16 file, made once): the
# files on disk at each stage do not depend on the depth, and the bytes hold or fail tensor
# by tensor (15 s with all 30 layers, 6 s with 8).
@pytest.mark.slow
def test_make_gguf_never_writes_a_bf16_file(
    demo_model_8_layers: Path, bf16_gguf, tmp_path: Path
) -> None:
    """With a computed importance matrix: the matrix from the shards (no model file is
    written for it), then the artifact; the disk never holds a BF16 GGUF. The artifact is
    what llama.cpp's quantizer makes from the BF16 file with the matrix that was drawn."""
    from quantkit.backends.gguf.imatrix.compute import prepare_imatrix_data

    source = load_source(demo_model_8_layers)
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=2, chunk_size=256,
                                seed=0)  # fmt: skip
    request = ImatrixRequest(mode="auto", origin="test", data=data)
    work = tmp_path / "work"
    work.mkdir()
    seen: dict[str, set[str]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        seen.setdefault(stage, set()).update(p.name for p in work.iterdir())

    result = make_gguf(source, "Q4_K_M", work, imatrix=request, progress=progress)
    assert list(seen) == ["importance matrix (source)", "quantizing to Q4_K_M"]
    assert seen["importance matrix (source)"] == set()  # nothing written while it is drawn
    assert not any("BF16" in name for names in seen.values() for name in names)
    names = sorted(p.name for p in work.iterdir())
    assert names == sorted([result.artifact.name, f"{source.name}.imatrix.gguf"])
    method = result.manifest["imatrix"]["method"]
    assert method == (
        "the source's safetensors layer by layer in transformers (float32), as llama-imatrix"
    )
    # The same bytes as llama.cpp quantizing the BF16 file with the matrix that was drawn.
    label = f"{source.name}.imatrix.gguf"
    reference = tmp_path / "reference"
    reference.mkdir()
    expected = llama_cpp_quantize(bf16_gguf(demo_model_8_layers), reference, "Q4_K_M",
                                  load_imatrix(work / label), label)  # fmt: skip
    assert result.artifact.read_bytes() == expected
