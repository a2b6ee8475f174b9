"""Computing an importance matrix from the demo model's shards (real trained weights):
llama-imatrix's conventions (what is collected, counts, chunks, BOS), agreement with the
same statistic collected inside llama.cpp on the BF16 GGUF (compute.py, as llama-imatrix
does), and `convert --imatrix` end to end
(the file, the manifest, the card, `quantize.imatrix.*` read back from the output GGUF,
reuse of a saved file, a base model without a chat template under a profile)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support.cli_runner import run_cli
from support.gguf_reader import read_gguf

from quantkit.backends.gguf.imatrix.compute import (
    ImatrixData,
    compute_imatrix,
    prepare_imatrix_data,
)
from quantkit.backends.gguf.imatrix.matrix import load_imatrix, weight_columns
from quantkit.backends.gguf.imatrix.source_pass import compute_imatrix_from_source
from quantkit.source.model import load_source

pytest.importorskip("llama_cpp")
ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SAMPLES = 6  # about 3 chunks of 512 tokens: a few seconds on 2 cores


@pytest.fixture(scope="module")
def demo_source(demo_model: Path):
    return load_source(demo_model)


@pytest.fixture(scope="module")
def demo_bf16(demo_model: Path, bf16_gguf) -> Path:
    return bf16_gguf(demo_model)  # export_gguf's BF16 file, made once a session (read-only)


@pytest.fixture(scope="module")
def demo_data(demo_source) -> ImatrixData:
    return prepare_imatrix_data(
        demo_source.tokenizer, calibration=None, samples=SAMPLES, chunk_size=512, seed=0
    )


@pytest.fixture(scope="module")
def demo_imatrix(demo_source, demo_data: ImatrixData):
    """What `--imatrix auto` computes: from the shards, layer by layer (float32 below 2B)."""
    return compute_imatrix_from_source(demo_source, demo_data)


@pytest.fixture(scope="module")
def llama_imatrix(demo_bf16: Path, demo_data: ImatrixData):
    """The same statistic collected inside llama.cpp on the BF16 file, as llama-imatrix."""
    return compute_imatrix(demo_bf16, demo_data)


def test_collected_as_llama_imatrix_collects(demo_imatrix, demo_data, demo_source) -> None:
    """Every blk.* matrix product, each weight its own entry (Q/K/V and gate/up share their
    input, so their sums are equal); token_embd (a row lookup) and the output matrix (left
    out by llama-imatrix unless --process-output) are not there; counts are tokens."""
    layers = demo_source.geometry.num_layers
    expected = {f"blk.{i}.{role}.weight" for i in range(layers) for role in ROLES}
    assert set(demo_imatrix.entries) == expected
    tokens = len(demo_data.chunks) * 512
    assert demo_imatrix.chunk_count == len(demo_data.chunks) >= 2
    assert demo_imatrix.chunk_size == 512 and demo_imatrix.datasets == ("quantkit:builtin",)
    columns = weight_columns(demo_source)
    for name, entry in demo_imatrix.entries.items():
        assert entry.counts.tolist() == [tokens], name
        assert entry.n_cols == columns[name], name
        assert (entry.sums > 0).all(), name
    for i in range(layers):
        e = {role: demo_imatrix.entries[f"blk.{i}.{role}.weight"].sums for role in ROLES}
        np.testing.assert_array_equal(e["attn_q"], e["attn_k"])
        np.testing.assert_array_equal(e["attn_q"], e["attn_v"])
        np.testing.assert_array_equal(e["ffn_gate"], e["ffn_up"])


def test_chunks_follow_llama_imatrix(demo_source) -> None:
    """One token stream (one BOS at its start), cut into whole chunks; where the model adds
    a BOS, the first token of every chunk is replaced by it (not inserted)."""
    bundle = demo_source.tokenizer
    plain = prepare_imatrix_data(bundle, calibration=None, samples=8, chunk_size=256, seed=1)
    assert all(len(c) == 256 for c in plain.chunks)
    assert plain.calibration["chunks"] == len(plain.chunks)
    assert plain.calibration["tokens"] >= plain.tokens  # the remainder is dropped
    with_bos = replace(bundle, tokenizer_config={**bundle.tokenizer_config, "add_bos_token": True})
    bos = with_bos.token_id(with_bos.special_token("bos"))
    data = prepare_imatrix_data(with_bos, calibration=None, samples=8, chunk_size=256, seed=1)
    assert all(c[0] == bos for c in data.chunks)
    # the same stream as without BOS (the chat template here writes no BOS itself)
    for a, b in zip(data.chunks, plain.chunks, strict=True):
        assert a[1:] == b[1:]


def _relative_differences(ours, reference) -> list[np.ndarray]:
    """Per entry, |ours - reference| / reference per column of the means; same entries and
    token counts first."""
    assert set(ours.entries) == set(reference.entries)
    diffs = []
    for name, entry in ours.entries.items():
        ref = reference.entries[name]
        assert entry.counts.tolist() == ref.counts.tolist(), name
        diffs.append(np.abs(entry.mean() - ref.mean()) / ref.mean())
    return diffs


def test_agrees_with_llama_cpp_on_the_bf16_file(demo_imatrix, llama_imatrix) -> None:
    """float32 from the shards against llama.cpp running the BF16 file with its own kernels
    (which round the activations to BF16 inside each product): rounding apart, the same
    sums. Measured: median 0.04 %, 0.27 % for the worst entry's median (docs/formats.md);
    a Q8_0 file's matrix differs from the BF16 one by 0.47 %."""
    diffs = _relative_differences(demo_imatrix, llama_imatrix)
    worst = max(float(np.median(d)) for d in diffs)
    print("median", np.median(np.concatenate(diffs)), "worst entry's median", worst)
    assert np.median(np.concatenate(diffs)) < 0.001
    assert worst < 0.005


def test_bfloat16_from_2b_parameters_stays_closer_than_a_q8_0_file(
    demo_source, demo_data, llama_imatrix, monkeypatch
) -> None:
    """From 2B parameters the pass computes in bfloat16 (runtime.cpu.eval_dtype): the
    activations themselves rounded, so further from llama.cpp's BF16 file than float32,
    but still closer than the Q8_0 file's matrix quantkit used before (median 0.47 %,
    p99 5.4 %). Measured: median 0.14 %, p99 1.5 %."""
    import quantkit.runtime.cpu as cpu

    monkeypatch.setattr(cpu, "eval_dtype", lambda parameters: "bfloat16")
    bf16 = compute_imatrix_from_source(demo_source, demo_data)
    diffs = np.concatenate(_relative_differences(bf16, llama_imatrix))
    print("median", np.median(diffs), "p99", np.quantile(diffs, 0.99))
    assert 0.0005 < np.median(diffs) < 0.003  # above float32's: it did run in bfloat16
    assert np.quantile(diffs, 0.99) < 0.03


# The tests' GGUF reader sees what gguf-py's GGUFReader sees (tests/support/
# test_gguf_support.py) without its seconds per read of the demo's 49k-token vocabulary.


def _gguf_kv(path: Path, prefix: str) -> dict:
    fields = read_gguf(path).fields
    return {k: f.contents() for k, f in fields.items() if k.startswith(prefix)}


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in read_gguf(path).tensors.values()}


@pytest.mark.slow
def test_convert_with_auto_then_with_the_saved_file(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "Q4_K_M",
                   "--imatrix", "auto", "--calibration-samples", SAMPLES, "--no-verify",
                   "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    artifact, matrix = payload["files"]
    assert (artifact["role"], matrix["role"]) == ("artifact", "imatrix")
    assert matrix["name"] == f"{demo_model.name}.imatrix.gguf"
    saved = load_imatrix(out / matrix["name"])
    assert len(saved.entries) == 210 and saved.chunk_count >= 2
    # the metadata llama-quantize writes, read back from the output file
    assert _gguf_kv(out / artifact["name"], "quantize.imatrix.") == {
        "quantize.imatrix.file": matrix["name"],
        "quantize.imatrix.dataset": "quantkit:builtin",
        "quantize.imatrix.entries_count": 210,
        "quantize.imatrix.chunks_count": saved.chunk_count,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["imatrix"]
    assert info["source"] == "computed" and info["origin"] == "--imatrix"
    assert info["calibration"]["samples"] == SAMPLES and info["chunk_count"] == saved.chunk_count
    card = (out / "README.md").read_text()
    assert "## Importance matrix" in card and "imatrix-calibrated" in card
    bpw = 8 * artifact["bytes"] / payload["source"]["parameters"]
    assert f"| {artifact['bytes'] / 1e6:,.1f} MB | {bpw:.2f} |" in card  # not a "split"
    assert f"FROM ./{artifact['name']}" in (out / "Modelfile").read_text()

    # Reuse: the saved file gives the same quantized tensors; only the file name differs.
    again = tmp_path / "file"
    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "Q4_K_M",
                   "--imatrix", out / matrix["name"], "--no-verify", "--out", again,
                   "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record, copied = json.loads(proc.stdout)["files"]
    assert _tensor_bytes(again / record["name"]) == _tensor_bytes(out / artifact["name"])
    # the given file is copied into the artifact; only its name is recorded, not the path
    assert (copied["role"], copied["name"]) == ("imatrix", matrix["name"])
    assert copied["sha256"] == matrix["sha256"] and (again / matrix["name"]).is_file()
    kv = _gguf_kv(again / record["name"], "quantize.imatrix.file")
    assert kv == {"quantize.imatrix.file": matrix["name"]}
    manifest_text = (again / "manifest.json").read_text()
    reused = json.loads(manifest_text)["imatrix"]
    assert reused["source"] == "file" and reused["sha256"] == matrix["sha256"]
    assert reused["file"] == matrix["name"] and str(tmp_path) not in manifest_text


def _base_model_copy(demo_model: Path, dest: Path) -> Path:
    """The demo model without a chat template (a base model): no chat_template.jinja, no
    additional templates, no chat_template key; the weights linked, not copied."""
    dest.mkdir()
    for item in demo_model.iterdir():
        if item.name in ("chat_template.jinja", "additional_chat_templates"):
            continue
        if item.name == "tokenizer_config.json":
            config = json.loads(item.read_text())
            config.pop("chat_template", None)
            (dest / item.name).write_text(json.dumps(config))
        elif item.suffix == ".safetensors":
            (dest / item.name).symlink_to(item)
        elif item.is_file():
            (dest / item.name).write_bytes(item.read_bytes())
    return dest


@pytest.mark.slow
def test_a_base_model_converts_with_a_profile(demo_model: Path, tmp_path: Path) -> None:
    """A source with no chat template, converted with a GGUF profile (imatrix = auto): the
    matrix is computed from the built-in mix as plain text, and the manifest and the GGUF
    say so."""
    base = _base_model_copy(demo_model, tmp_path / "base")
    assert not load_source(base).tokenizer.chat_templates
    out = tmp_path / "out"
    proc = run_cli("convert", base, "--profile", "cpu-64gb", "--no-verify", "--no-eval",
                   "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact, matrix = json.loads(proc.stdout)["files"]
    assert matrix["role"] == "imatrix"
    info = json.loads((out / "manifest.json").read_text())["imatrix"]
    assert info["source"] == "computed" and info["origin"] == "profile cpu-64gb"
    assert info["calibration"]["rendering"] == "plain text (no chat template)"
    assert info["datasets"] == ["quantkit:builtin (plain text)"]
    kv = _gguf_kv(out / artifact["name"], "quantize.imatrix.dataset")
    assert kv == {"quantize.imatrix.dataset": "quantkit:builtin (plain text)"}
    assert "plain-text samples" in (out / "README.md").read_text()


@pytest.mark.slow
def test_a_profile_default_that_cannot_be_made_is_skipped(demo_model: Path, tmp_path: Path) -> None:
    """Too little calibration text for one chunk: the profile's imatrix = auto gives way
    (a warning, the manifest and the card say so) and the convert goes on without one."""
    out = tmp_path / "out"
    proc = run_cli("convert", demo_model, "--profile", "cpu-64gb", "--calibration-samples", 1,
                   "--calibration-seq-len", 100_000, "--no-verify", "--no-eval",
                   "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No importance matrix" in proc.stderr and "profile cpu-64gb" in proc.stderr
    assert "importance matrix: none (profile cpu-64gb default skipped" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["imatrix"]
    assert info["source"] == "none" and info["origin"] == "profile cpu-64gb"
    assert "less than one imatrix chunk" in info["skipped"]
    assert [f["role"] for f in manifest["files"]] == ["artifact"]
    (gguf_file,) = out.glob("*.gguf")
    assert _gguf_kv(gguf_file, "quantize.imatrix.") == {}
    assert "## Importance matrix\n\nNone" in (out / "README.md").read_text()


def test_qwen3_entries_are_the_gguf_block_weights(qwen3_model: Path) -> None:
    """Qwen3 (Hermes 4 14B's architecture; q_norm/k_norm are not products): one entry per
    block weight the GGUF writer emits, named as it names them, with its input columns."""
    source = load_source(qwen3_model)
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=2, chunk_size=256,
                                seed=0)  # fmt: skip
    imatrix = compute_imatrix_from_source(source, data)
    columns = {n: c for n, c in weight_columns(source).items() if n.startswith("blk.")}
    assert {n: e.n_cols for n, e in imatrix.entries.items()} == columns
    assert all(e.counts.tolist() == [len(data.chunks) * 256] for e in imatrix.entries.values())
