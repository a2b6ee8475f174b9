"""Importance-matrix files and settings, without computing one: llama.cpp's GGUF imatrix
layout field by field, round trips, the legacy .dat format, errors, `--imatrix`
resolution and the arrays handed to llama_model_quantize."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from quantkit.backends.gguf.imatrix.matrix import (
    Imatrix,
    ImatrixEntry,
    check_imatrix,
    load_imatrix,
    save_imatrix,
)
from quantkit.backends.gguf.imatrix.request import resolve_imatrix
from quantkit.errors import ImatrixError


def _imatrix(seed: int = 0) -> Imatrix:
    rng = np.random.default_rng(seed)
    entries = {
        "blk.1.ffn_down.weight": ImatrixEntry(
            rng.random((1, 96), dtype=np.float32) * 100, np.array([2048.0])
        ),
        "blk.0.attn_q.weight": ImatrixEntry(
            rng.random((1, 64), dtype=np.float32), np.array([2048.0])
        ),
        # a merged MoE tensor (3 experts), one of which saw no token
        "blk.0.ffn_up_exps.weight": ImatrixEntry(
            rng.random((3, 32), dtype=np.float32), np.array([700.0, 0.0, 12.0])
        ),
    }
    return Imatrix(entries, ("calib.txt", "more.txt"), 4, 512)


def test_round_trip(tmp_path: Path) -> None:
    original = _imatrix()
    loaded = load_imatrix(save_imatrix(original, tmp_path / "m.imatrix.gguf"))
    assert loaded.datasets == original.datasets
    assert (loaded.chunk_count, loaded.chunk_size, loaded.legacy) == (4, 512, False)
    assert set(loaded.entries) == set(original.entries)
    for name, entry in original.entries.items():
        np.testing.assert_array_equal(loaded.entries[name].sums, entry.sums)
        np.testing.assert_array_equal(loaded.entries[name].counts, entry.counts)


def test_gguf_layout_is_what_llama_imatrix_writes(tmp_path: Path) -> None:
    """tools/imatrix/imatrix.cpp save_imatrix: general.type, imatrix.datasets (string
    array), imatrix.chunk_count and imatrix.chunk_size (u32), in that order and nothing
    else; tensors sorted by entry name, `<name>.in_sum2` F32 [n_cols, n_mat] then
    `<name>.counts` F32 [1, n_mat], trailing 1s dropped (ggml_n_dims); GGUF v3, alignment 32."""
    import gguf

    path = save_imatrix(_imatrix(), tmp_path / "m.imatrix.gguf")
    reader = gguf.GGUFReader(path)
    V = gguf.GGUFValueType
    kv = [(name, f.types) for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    assert kv == [
        ("general.type", [V.STRING]),
        ("imatrix.datasets", [V.ARRAY, V.STRING]),
        ("imatrix.chunk_count", [V.UINT32]),
        ("imatrix.chunk_size", [V.UINT32]),
    ]
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.datasets"].contents() == ["calib.txt", "more.txt"]
    assert reader.fields["GGUF.version"].contents() == 3
    assert reader.alignment == 32
    layout = [
        (t.name, t.tensor_type, [int(n) for n in t.shape], t.data_offset % 32)
        for t in reader.tensors
    ]
    F32 = gguf.GGMLQuantizationType.F32
    assert layout == [
        ("blk.0.attn_q.weight.in_sum2", F32, [64], 0),  # n_dims 1: ggml_n_dims
        ("blk.0.attn_q.weight.counts", F32, [1], 0),
        ("blk.0.ffn_up_exps.weight.in_sum2", F32, [32, 3], 0),
        ("blk.0.ffn_up_exps.weight.counts", F32, [1, 3], 0),
        ("blk.1.ffn_down.weight.in_sum2", F32, [96], 0),
        ("blk.1.ffn_down.weight.counts", F32, [1], 0),
    ]
    counts = next(t for t in reader.tensors if t.name == "blk.0.ffn_up_exps.weight.counts")
    assert np.asarray(counts.data).reshape(-1).tolist() == [700.0, 0.0, 12.0]


def test_mean_is_what_llama_quantize_passes(tmp_path: Path) -> None:
    """quantize.cpp load_imatrix: sums / count per matrix; a matrix with count 0 gets 1."""
    entry = _imatrix().entries["blk.0.ffn_up_exps.weight"]
    mean = entry.mean().reshape(3, 32)
    np.testing.assert_allclose(mean[0], entry.sums[0] / 700.0, rtol=1e-6)
    assert (mean[1] == 1.0).all()
    np.testing.assert_allclose(mean[2], entry.sums[2] / 12.0, rtol=1e-6)


def _write_legacy(path: Path, entries: dict[str, np.ndarray], ncall: int, chunks: int) -> None:
    """imatrix.cpp save_imatrix_legacy: values stored as sum / count * ncall."""
    out = struct.pack("<i", len(entries))
    for name, values in sorted(entries.items()):
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
        out += values.astype("<f4").tobytes()
    dataset = b"wiki.train.raw"
    out += struct.pack("<i", chunks) + struct.pack("<i", len(dataset)) + dataset
    path.write_bytes(out)


def test_legacy_dat_is_read(tmp_path: Path) -> None:
    sums = np.arange(1, 9, dtype=np.float32) * 512.0
    count, ncall = 1024, 2  # two chunks of 512 tokens
    stored = sums / count * ncall
    path = tmp_path / "old.dat"
    _write_legacy(path, {"blk.0.attn_k.weight": stored}, ncall, 2)
    imatrix = load_imatrix(path)
    assert imatrix.legacy and imatrix.chunk_count == 2 and imatrix.datasets == ("wiki.train.raw",)
    np.testing.assert_allclose(imatrix.entries["blk.0.attn_k.weight"].mean(), sums / count)


def test_legacy_dat_without_calls_keeps_the_values(tmp_path: Path) -> None:
    values = np.array([0.5, 2.0, 3.0], dtype=np.float32)
    path = tmp_path / "zero.dat"
    _write_legacy(path, {"blk.0.ffn_up.weight": values}, 0, 0)
    np.testing.assert_array_equal(load_imatrix(path).entries["blk.0.ffn_up.weight"].mean(), values)


def test_bad_files_are_imatrix_errors(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="does not exist"):
        load_imatrix(tmp_path / "nope.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"\x07\x00\x00\x00not an imatrix at all")
    with pytest.raises(ImatrixError):
        load_imatrix(garbage)
    good = save_imatrix(_imatrix(), tmp_path / "good.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImatrixError, match="not a readable importance matrix"):
        load_imatrix(truncated)


def test_a_model_gguf_is_not_an_imatrix(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ImatrixError, match="not an importance matrix"):
        load_imatrix(path)


def test_check_against_the_model() -> None:
    imatrix = _imatrix()
    columns = {
        "blk.0.attn_q.weight": 64,
        "blk.0.ffn_up_exps.weight": 32,
        "blk.1.ffn_down.weight": 96,
        "blk.1.attn_k.weight": 64,
    }
    assert check_imatrix(imatrix, columns, where="m", required=False) == ["blk.1.attn_k.weight"]
    with pytest.raises(ImatrixError, match="needs every one"):
        check_imatrix(imatrix, columns, where="m", required=True)
    with pytest.raises(ImatrixError, match="does not fit this model"):
        check_imatrix(imatrix, {**columns, "blk.1.ffn_down.weight": 128}, where="m",
                      required=False)  # fmt: skip
    del columns["blk.1.ffn_down.weight"]
    with pytest.raises(ImatrixError, match="does not have.*another model"):
        check_imatrix(imatrix, columns, where="m", required=False)


AUTO_PROFILE = SimpleNamespace(name="p4", imatrix="auto")


@pytest.mark.parametrize(
    "setting, fmt, quant, hardware, expected",
    [
        (None, "gguf", "Q4_K_M", None, None),  # no profile: off for types that need none
        (None, "gguf", "Q4_K_M", AUTO_PROFILE, "auto"),  # the profile's default
        (None, "gguf", "Q8_0", AUTO_PROFILE, None),  # our writer makes Q8_0: not applicable
        (None, "gguf", "IQ2_XS", None, "auto"),  # llama.cpp refuses IQ2_XS without one
        (None, "gguf", "Q2_K_S", None, "auto"),
        ("none", "gguf", "Q4_K_M", AUTO_PROFILE, None),
        ("AUTO", "gguf", "Q3_K_M", None, "auto"),
        ("my.imatrix.gguf", "gguf", "IQ4_XS", None, "my.imatrix.gguf"),
        (None, "gptq", "W4A16", AUTO_PROFILE, None),
        # a profile's auto is for 4 bits and lower: not for a --quant override above that
        (None, "gguf", "Q5_K_M", AUTO_PROFILE, None),
        (None, "gguf", "Q6_K", AUTO_PROFILE, None),
        (None, "gguf", "Q5_0", AUTO_PROFILE, None),
        (None, "gguf", "IQ4_XS", AUTO_PROFILE, "auto"),
        (None, "gguf", "Q2_K", AUTO_PROFILE, "auto"),
        # asked for: any type llama.cpp's quantizer makes
        ("auto", "gguf", "Q6_K", AUTO_PROFILE, "auto"),
        ("auto", "gguf", "Q5_K_M", None, "auto"),
    ],
)
def test_resolution(setting, fmt, quant, hardware, expected) -> None:
    assert resolve_imatrix(setting, fmt, quant, hardware)[0] == expected


def test_resolution_takes_a_path_and_says_why() -> None:
    assert resolve_imatrix(Path("m.gguf"), "gguf", "Q4_K_M", None) == ("m.gguf", "--imatrix")
    assert resolve_imatrix(None, "gguf", "Q4_K_M", AUTO_PROFILE) == ("auto", "profile p4")
    assert resolve_imatrix(None, "gguf", "IQ1_S", None) == ("auto", "IQ1_S needs one")
    off, why = resolve_imatrix(None, "gguf", "Q6_K", AUTO_PROFILE)
    assert off is None and "4 bits and lower, Q6_K is 6-bit" in why


def _source(tokenizer=None):
    return SimpleNamespace(path=Path("/models/base"), tokenizer=tokenizer)


def test_a_profile_default_that_cannot_be_made_is_skipped(caplog) -> None:
    """No tokenizer: a profile's auto gives way (warned, recorded in the manifest); the
    user's --imatrix auto fails with a hint naming --imatrix none; a type that needs one
    fails without suggesting none for it."""
    from quantkit.backends.gguf.imatrix.request import SKIPPED, apply_imatrix, prepare_imatrix

    with caplog.at_level("WARNING"):
        request = prepare_imatrix("auto", _source(), "Q4_K_M", origin="profile cpu-64gb")
    assert request.mode == SKIPPED and "no tokenizer" in request.reason
    assert "profile cpu-64gb default" in caplog.text and "without one" in caplog.text
    matrix, label, records, described = apply_imatrix(request, None, Path("y"), "m")
    assert (matrix, label, records) == (None, "", [])
    assert described == {"source": "none", "origin": "profile cpu-64gb",
                         "skipped": request.reason}  # fmt: skip
    with pytest.raises(ImatrixError, match="no tokenizer") as err:
        prepare_imatrix("auto", _source(), "Q4_K_M", origin="--imatrix")
    assert "--imatrix none" in err.value.hint
    with pytest.raises(ImatrixError, match="no tokenizer") as err:
        prepare_imatrix("auto", _source(), "IQ2_XS", origin="IQ2_XS needs one")
    assert "--imatrix FILE" in err.value.hint and "IQ2_XS cannot be made" in err.value.hint


def test_a_calibration_problem_asked_for_names_imatrix_none(demo_model: Path) -> None:
    """--imatrix auto with too little text: the calibration error, and how to go on."""
    from quantkit.backends.gguf.imatrix.request import SKIPPED, prepare_imatrix
    from quantkit.errors import CalibrationError
    from quantkit.source.model import load_source

    source = load_source(demo_model)
    with pytest.raises(CalibrationError, match="less than one imatrix chunk") as err:
        prepare_imatrix("auto", source, "Q4_K_M", origin="--imatrix", samples=1, seq_len=8192)
    assert err.value.hint.endswith("Pass --imatrix none to convert without one, or --imatrix FILE.")
    assert "--calibration-samples" in err.value.hint
    request = prepare_imatrix("auto", source, "Q4_K_M", origin="profile p4", samples=1,
                              seq_len=8192)  # fmt: skip
    assert request.mode == SKIPPED and "less than one imatrix chunk" in request.reason


def test_reading_closes_the_memory_map(tmp_path: Path, monkeypatch) -> None:
    """GGUFReader memory-maps the file; load_imatrix closes the map itself rather than
    leaving the file open until the garbage collector runs."""
    import gguf

    path = save_imatrix(_imatrix(), tmp_path / "m.imatrix.gguf")
    maps: list = []

    class Recording(gguf.GGUFReader):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            maps.append(self.data._mmap)

    monkeypatch.setattr(gguf, "GGUFReader", Recording)
    loaded = load_imatrix(path)
    assert len(maps) == 1 and maps[0].closed
    assert set(loaded.entries) == set(_imatrix().entries)  # values copied out before closing


def test_kv_strings_are_cut_on_a_character_boundary() -> None:
    from quantkit.backends.gguf.quantize import kv_string

    assert kv_string("m.imatrix.gguf") == b"m.imatrix.gguf"
    name = "é" * 100  # 200 bytes: byte 127 is the middle of a character
    cut = kv_string(name)
    assert len(cut) == 126 and cut.decode() == "é" * 63
    emoji = "a" + "🦙" * 40
    assert kv_string(emoji).decode() == "a" + "🦙" * 31  # 1 + 4 * 31 = 125 bytes


@pytest.mark.parametrize(
    "setting, fmt, quant, message",
    [
        ("none", "gguf", "IQ2_XXS", "needs an importance matrix"),
        ("auto", "gguf", "Q8_0", "quantkit's own GGUF writer"),
        ("auto", "gguf", "BF16", "quantkit's own GGUF writer"),
        ("x.gguf", "fp8", "FP8", "the fp8 path"),
    ],
)
def test_resolution_refusals(setting, fmt, quant, message) -> None:
    with pytest.raises(ImatrixError, match=message):
        resolve_imatrix(setting, fmt, quant, None)


def test_quantize_arrays_are_terminated_like_llama_quantize_builds_them() -> None:
    """llama_model_imatrix_data {name, data, size} ending with a NULL name; kv overrides
    ending with an empty key (tools/quantize/quantize.cpp)."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    from quantkit.backends.gguf.quantize import _imatrix_params

    imatrix = _imatrix()
    keep: list = []
    entries, kv = _imatrix_params(llama_cpp, imatrix, "m.imatrix.gguf", keep)
    names = []
    for i in range(len(imatrix.entries) + 1):
        if entries[i].name is None:
            break
        name = entries[i].name.decode()
        names.append(name)
        data = np.ctypeslib.as_array(entries[i].data, shape=(entries[i].size,))
        np.testing.assert_array_equal(data, imatrix.entries[name].mean())
    assert names == sorted(imatrix.entries)
    assert entries[len(names)].name is None and not entries[len(names)].data
    keys = []
    while kv[len(keys)].key:
        keys.append(kv[len(keys)].key.decode())
    assert keys == [
        "quantize.imatrix.file",
        "quantize.imatrix.dataset",
        "quantize.imatrix.entries_count",
        "quantize.imatrix.chunks_count",
    ]
    assert kv[0].value.val_str == b"m.imatrix.gguf" and kv[1].value.val_str == b"calib.txt"
    assert (kv[2].value.val_i64, kv[3].value.val_i64) == (3, 4)
    # a non-ASCII name longer than the 127 bytes llama.cpp keeps: cut between characters
    _, kv = _imatrix_params(llama_cpp, imatrix, "donnees-" + "é" * 80 + ".gguf", keep)
    assert kv[0].value.val_str.decode() == "donnees-" + "é" * 59  # 126 of 127 bytes
    assert ctypes.sizeof(llama_cpp.llama_model_imatrix_data) == 3 * 8
