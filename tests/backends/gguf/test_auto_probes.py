"""--quant auto's probes without a model: which tensors each probe changes (every other
layer of a role), what a budget that does not count a tensor leaves unprobed, and the shard
writer on a tiny F32 file with a 3-D (experts) tensor whose importance matrix has one row
per matrix. test_auto.py holds the probes to llama.cpp's own quantizer on the demo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantkit.backends.gguf.auto import _probe_types
from quantkit.backends.gguf.auto.probes import (
    REFERENCE_TYPE,
    _groups,
    build_probe_set,
    quantize_rows,
)
from quantkit.backends.gguf.auto.weights import BF16File
from quantkit.backends.gguf.imatrix.matrix import Imatrix, ImatrixEntry
from quantkit.planning.budget import FILE, GPU, Budget
from quantkit.planning.mix import FileLayout

ROW = 256


def _names(layers: int) -> list[str]:
    names = ["token_embd.weight"]
    for i in range(layers):
        names += [f"blk.{i}.attn_norm.weight", f"blk.{i}.attn_v.weight", f"blk.{i}.ffn_up.weight"]
    return [*names, "output_norm.weight", "output.weight"]


def test_a_probe_changes_every_other_layer_of_its_role() -> None:
    names = _names(5)
    probe = {n: "Q4_K" for n in names if "norm" not in n}
    probe["blk.2.ffn_up.weight"] = REFERENCE_TYPE  # nothing to change there
    groups, owners = _groups(names, probe, ("attn_v", "ffn_up", "output", "token_embd"))
    shards = dict(zip(range(len(groups)), zip(owners, groups, strict=True), strict=True))
    assert shards[0] == (None, [n for n in names if "norm" in n])
    probed = {owner: group for owner, group in shards.values() if owner is not None}
    assert probed["attn_v"] == ["blk.0.attn_v.weight", "blk.2.attn_v.weight", "blk.4.attn_v.weight"]
    assert probed["ffn_up"] == ["blk.0.ffn_up.weight", "blk.4.ffn_up.weight"]
    assert probed["token_embd"] == ["token_embd.weight"] and probed["output"] == ["output.weight"]
    assert sorted(n for group in groups for n in group) == sorted(names)  # each once


def test_a_role_changed_only_in_odd_layers_is_probed_there() -> None:
    names = _names(2)
    probe = {n: REFERENCE_TYPE for n in names if "norm" not in n}
    probe["blk.1.attn_v.weight"] = "Q4_K"
    groups, owners = _groups(names, probe, ("attn_v",))
    assert groups[owners.index("attn_v")] == ["blk.1.attn_v.weight"]


@pytest.mark.parametrize(("scope", "tied", "embd_probed"),
                         [(FILE, False, True), (GPU, False, False), (GPU, True, True)])  # fmt: skip
def test_a_tensor_the_budget_does_not_count_is_not_probed(scope, tied, embd_probed) -> None:
    """A GPU budget leaves the input embeddings out (llama.cpp keeps them in RAM): they get
    their best type whatever their gain, so measuring it would be time spent for nothing."""
    shapes = {"token_embd.weight": (512, ROW), "blk.0.attn_v.weight": (ROW, ROW)}
    if not tied:
        shapes["output.weight"] = (512, ROW)
    layout = FileLayout("llama", 4096, 0, shapes)
    errors = {n: {"Q4_K": 0.01, "Q6_K": 0.001, REFERENCE_TYPE: 0.0001} for n in shapes}
    five_bits = sum(rows * cols for rows, cols in shapes.values()) * 5 // 8  # Q4_K below
    probe = _probe_types(errors, layout, Budget(4096 + five_bits, scope, "test"))
    assert probe["blk.0.attn_v.weight"] == "Q4_K"
    assert (probe["token_embd.weight"] != REFERENCE_TYPE) == embd_probed


def test_the_shards_quantize_each_matrix_with_its_own_importance(tmp_path: Path) -> None:
    """An experts tensor (3-D) has importance values per matrix; an F32 source is read as
    it is; tensors outside the probe (norms) are copied."""
    import gguf

    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": rng.standard_normal((64, ROW)).astype(np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal(ROW).astype(np.float32),
        "blk.0.ffn_up_exps.weight": rng.standard_normal((3, 40, ROW)).astype(np.float32),
    }
    path = tmp_path / "tiny-F32.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    sums = rng.uniform(0.5, 2.0, (3, ROW)).astype(np.float32)
    imatrix = Imatrix({"blk.0.ffn_up_exps.weight": ImatrixEntry(sums, np.array([1.0, 2.0, 4.0]))})
    probe = {"token_embd.weight": "Q4_K", "blk.0.ffn_up_exps.weight": "Q4_K"}
    probes = build_probe_set(BF16File(path), probe, tmp_path, imatrix)
    assert probes.changed == {"ffn_up_exps": ("blk.0.ffn_up_exps.weight",),
                              "token_embd": ("token_embd.weight",)}  # fmt: skip

    def read(role: str) -> dict[str, gguf.ReaderTensor]:
        first = probes.probe({role}, role)
        return {t.name: t for p in sorted(first.parent.glob("*.gguf"))
                for t in gguf.GGUFReader(p).tensors}  # fmt: skip

    low, base = read("ffn_up_exps"), read("baseline")
    weights = imatrix.entries["blk.0.ffn_up_exps.weight"].mean().reshape(3, ROW)
    experts = tensors["blk.0.ffn_up_exps.weight"]
    expected = b"".join(quantize_rows("Q4_K", experts[e], weights[e]).tobytes() for e in range(3))
    assert low["blk.0.ffn_up_exps.weight"].data.tobytes() == expected
    assert [int(d) for d in low["blk.0.ffn_up_exps.weight"].shape] == [ROW, 40, 3]
    assert low["token_embd.weight"].tensor_type.name == REFERENCE_TYPE
    assert base["blk.0.ffn_up_exps.weight"].data.tobytes() == b"".join(
        quantize_rows(REFERENCE_TYPE, experts[e], None).tobytes() for e in range(3))
    norm = base["blk.0.attn_norm.weight"]
    assert norm.tensor_type.name == "F32"
    assert np.array_equal(norm.data, tensors["blk.0.attn_norm.weight"])
    probes.remove()
