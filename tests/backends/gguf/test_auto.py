"""--quant auto on the demo model, in the library: the budget is kept to the byte, the recipe
rebuilds the same file (in quantkit and in llama.cpp's own llama-quantize), and the mix is
not worse than Q4_K_M at Q4_K_M's size. The benchmark (scripts/bench_budget.py) measures
by how much; this test only holds the line."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from quantkit.planning.budget import FILE, Budget
from quantkit.source.model import load_source

pytestmark = pytest.mark.slow

# scripts/setup.sh builds llama-quantize beside llama-server (tests/conftest.py points here)
BIN = Path(os.environ.get("QUANTKIT_LLAMA_BIN", "/nonexistent"))
CHUNKS = 8  # evaluation chunks of 512 tokens for the paired comparison


@pytest.fixture(scope="module")
def stock_and_auto(demo_model: Path, demo_bf16_imatrix, tmp_path_factory):
    """Q4_K_M, and the recipe for its size chosen as convert chooses it, straight from the
    shards; the AUTO file is llama.cpp's quantizer's from the BF16 file with that recipe."""
    from quantkit.backends.gguf.auto import choose_recipe
    from quantkit.backends.gguf.auto.weights import BF16Shards
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.formats.gguf_recipe import write_recipe
    from quantkit.source.model import load_source

    bf16, imatrix_path = demo_bf16_imatrix
    imatrix = load_imatrix(imatrix_path)
    work = tmp_path_factory.mktemp("auto")
    stock = work / "demo-Q4_K_M.gguf"
    # the imatrix as convert records it (its file name in the artifact folder)
    label = imatrix_path.name
    quantize_gguf(bf16, stock, "Q4_K_M", imatrix=imatrix, imatrix_file=label)
    budget = Budget(stock.stat().st_size, FILE, "Q4_K_M's size")
    source = load_source(demo_model)
    recipe = choose_recipe(BF16Shards(source), source, budget, imatrix=imatrix, work=work)
    auto = work / "demo-AUTO.gguf"
    quantize_gguf(bf16, auto, recipe.file_type, imatrix=imatrix, imatrix_file=label,
                  tensor_types=recipe.types)  # fmt: skip
    json_path, text_path = write_recipe(recipe, work, "demo")
    return stock, auto, recipe, json_path, text_path


def test_the_file_keeps_to_the_budget_and_fills_it(stock_and_auto) -> None:
    stock, auto, recipe, _, _ = stock_and_auto
    size = auto.stat().st_size
    assert size <= recipe.budget["bytes"] == stock.stat().st_size
    assert size >= 0.99 * recipe.budget["bytes"]
    assert abs(size - recipe.expected_bytes) < 8192  # the header estimate's margin
    assert not list(auto.parent.glob("auto-probe*"))  # probes are deleted


def test_every_tensor_has_the_type_the_recipe_gives(stock_and_auto) -> None:
    from quantkit.formats.gguf_read import tensor_types

    _, auto, recipe, _, _ = stock_and_auto
    in_file = tensor_types(auto)
    assert {n: in_file[n] for n in recipe.types} == recipe.types
    assert len(set(recipe.types.values())) >= 2  # a mix, not one type everywhere


def test_the_shards_give_the_relative_errors_of_the_bf16_file(
    stock_and_auto, demo_bf16_imatrix
) -> None:
    """The recipe's errors were measured on the shards: the same rows, as the same float32
    values as the BF16 file holds, so the same figures to the last bit (two of the types,
    one of 32-blocks and one of 256: each type's figure is measured on its own)."""
    from quantkit.backends.gguf.auto.sensitivity import relative_errors
    from quantkit.backends.gguf.auto.weights import BF16File
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix

    _, _, recipe, _, _ = stock_and_auto
    bf16, imatrix_path = demo_bf16_imatrix
    types = ("Q4_0", "Q6_K")
    from_file = relative_errors(BF16File(bf16), load_imatrix(imatrix_path), types=types)
    assert from_file == {name: {t: e for t, e in per_type.items() if t in types}
                         for name, per_type in recipe.errors.items()}  # fmt: skip
    assert sum(len(per_type) for per_type in from_file.values()) > len(from_file)


def test_the_recipe_rebuilds_the_same_file(stock_and_auto, demo_bf16_imatrix, tmp_path) -> None:
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.formats.gguf_recipe import read_recipe

    _, auto, _, json_path, _ = stock_and_auto
    bf16, imatrix_path = demo_bf16_imatrix
    again = tmp_path / "again.gguf"
    recipe = read_recipe(json_path)
    quantize_gguf(bf16, again, recipe.file_type, imatrix=load_imatrix(imatrix_path),
                  imatrix_file=imatrix_path.name, tensor_types=recipe.types)  # fmt: skip
    assert again.read_bytes() == auto.read_bytes()


@pytest.mark.parametrize("keep_intermediate", [False, True], ids=["from-shards", "via-bf16"])
def test_the_gguf_path_applies_a_recipe_file(
    stock_and_auto, demo_model: Path, demo_bf16_imatrix, tmp_path, keep_intermediate: bool
) -> None:
    """`convert --recipe` through the backend, straight from the shards (quantize_from_shards
    with the recipe's types, no BF16 file) or through a BF16 file kept beside the result
    (--keep-intermediate): the recipe read back from disk, the bytes llama.cpp's quantizer
    made from the BF16 file with it, and the records."""
    from quantkit.backends.gguf.auto.request import AutoRequest
    from quantkit.backends.gguf.backend import make_gguf
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix
    from quantkit.backends.gguf.imatrix.request import FILE, ImatrixRequest
    from quantkit.formats.gguf_recipe import read_recipe
    from quantkit.planning.cost import quantize_stage
    from quantkit.source.model import load_source

    _, auto, recipe, json_path, _ = stock_and_auto
    _, imatrix_path = demo_bf16_imatrix
    matrix = ImatrixRequest(FILE, "--imatrix", imatrix=load_imatrix(imatrix_path),
                            file=imatrix_path)  # fmt: skip
    seen: set[str] = set()
    built = make_gguf(load_source(demo_model), "AUTO", tmp_path, imatrix=matrix,
                      auto=AutoRequest(None, read_recipe(json_path), 0),
                      keep_intermediate=keep_intermediate,
                      progress=lambda stage, done, total: seen.add(stage))  # fmt: skip
    assert built.artifact.read_bytes() == auto.read_bytes()
    assert built.gate_quant == recipe.file_type == built.manifest["recipe"]["file_type"]
    roles = {"artifact", "imatrix", "recipe"} | ({"intermediate"} if keep_intermediate else set())
    assert {f["role"] for f in built.files} == roles
    assert (tmp_path / "demo-BF16.gguf").exists() == keep_intermediate
    # the label the estimate gives this stage (tests/planning/test_cost.py): rates are
    # recorded by label
    assert quantize_stage("AUTO") in seen


def test_llama_quantize_makes_the_same_file_from_the_tensor_type_file(
    stock_and_auto, demo_bf16_imatrix, tmp_path
) -> None:
    _, auto, recipe, _, text_path = stock_and_auto
    bf16, imatrix_path = demo_bf16_imatrix
    theirs = tmp_path / "llama-quantize.gguf"
    # run in the imatrix's folder, as the card says: the name given is the name recorded
    subprocess.run([BIN / "llama-quantize", "--imatrix", imatrix_path.name,
                    "--tensor-type-file", text_path, bf16, theirs, recipe.file_type, "2"],
                   check=True, capture_output=True, cwd=imatrix_path.parent)  # fmt: skip
    assert theirs.read_bytes() == auto.read_bytes()


def test_auto_is_not_worse_than_q4_k_m_at_its_size(stock_and_auto, demo_model: Path) -> None:
    import numpy as np

    from quantkit.evaluation.measure import evaluate_artifact

    stock, auto, _, _, _ = stock_and_auto
    ours = evaluate_artifact(auto, demo_model, max_chunks=CHUNKS)
    theirs = evaluate_artifact(stock, demo_model, max_chunks=CHUNKS)
    diff = np.asarray(ours.chunk_kld) - np.asarray(theirs.chunk_kld)  # paired per chunk
    error = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() < 2 * error, (ours.kld_mean, theirs.kld_mean)


@pytest.fixture(scope="module")
def first_layers_bf16_imatrix(demo_model_8_layers: Path, bf16_gguf, demo_bf16_imatrix):
    """The demo's first 8 layers as a BF16 GGUF (bf16_gguf's, read-only) and the demo's
    importance matrix cut to those layers: the entries llama.cpp collected for them (the
    first layers see the same inputs in the cut model as in the whole one)."""
    from quantkit.backends.gguf.imatrix.matrix import load_imatrix

    whole = load_imatrix(demo_bf16_imatrix[1])
    layers = load_source(demo_model_8_layers).geometry.num_layers
    entries = {n: e for n, e in whole.entries.items() if int(n.split(".")[1]) < layers}
    assert entries and len(entries) < len(whole.entries)
    return bf16_gguf(demo_model_8_layers), replace(whole, entries=entries)


# On the demo's first 8 layers (demo_model_8_layers), not all 30: every claim here holds
# tensor by tensor (each probe tensor is llama.cpp's quantization of that tensor alone, the
# shard files are compared byte for byte, a probe's changed layers are every other layer of
# the model at hand), and the first 8 layers hold every role, the 256-block ffn_down, the
# IQ2_XS tensors and layer 2's Q4_K exception. The whole model took ~80 s here, mostly the
# IQ2_XS searches of the three llama.cpp quantizations over all 30 layers.
def test_a_probe_is_the_bytes_of_its_own_quantization(demo_model_8_layers: Path,
                                                      first_layers_bf16_imatrix,
                                                      tmp_path) -> None:  # fmt: skip
    """measure_gains builds every probe from two sets of shards written in one pass over the
    BF16 file: each probe's tensors are what llama.cpp's quantizer writes for it on its own
    (K-quants and i-quants with the importance matrix too), and llama.cpp loads it. A role's
    probe changes its tensors in every other layer."""
    from support.gguf_reader import read_gguf_tensors

    from quantkit.backends.gguf.auto.probes import REFERENCE_TYPE, build_probe_set
    from quantkit.backends.gguf.auto.weights import BF16File, BF16Shards
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.evaluation.measure import evaluate_artifact
    from quantkit.planning.mix import FileLayout, tensor_role

    bf16, imatrix = first_layers_bf16_imatrix
    source = load_source(demo_model_8_layers)
    layout = FileLayout.read(bf16)
    assert BF16Shards(source).layout(tmp_path) == layout  # from a sparse BF16 file
    # types whose blocks divide the demo's rows (576; ffn_down's 1536 takes 256-blocks),
    # as auto_candidates would allow; IQ2_XS needs the matrix, which covers ffn_down
    shapes = layout.shapes
    special = {"token_embd": "Q5_0", "ffn_down": "IQ2_XS", "attn_q": REFERENCE_TYPE}
    probe = {n: special.get(tensor_role(n), "Q4_0") for n in shapes}
    probe.update({n: "Q4_K" for n in shapes if n.startswith("blk.2.ffn_down")})
    probes = build_probe_set(BF16File(bf16), probe, tmp_path, imatrix)
    # convert's own probes, straight from the shards: the same shard files, byte for byte
    streamed = build_probe_set(BF16Shards(source), probe, tmp_path / "shards", imatrix)
    assert (streamed.shards, streamed.changed) == (probes.shards, probes.changed)
    for kind in ("base", "low"):
        names = sorted(p.name for p in (probes.folder / kind).iterdir())
        assert names == sorted(p.name for p in (streamed.folder / kind).iterdir())
        for name in names:
            theirs = (probes.folder / kind / name).read_bytes()
            assert (streamed.folder / kind / name).read_bytes() == theirs, (kind, name)
    streamed.remove()
    assert "attn_q" not in probes.roles  # nothing to change: no probe
    assert set(probes.roles) >= {"attn_v", "ffn_down", "token_embd"}
    assert probes.changed["token_embd"] == ("token_embd.weight",)
    for role in probes.roles:
        layers = sorted(int(n.split(".")[1]) for n in probes.changed[role] if n.startswith("blk."))
        every = sorted(int(n.split(".")[1]) for n in shapes if tensor_role(n) == role
                       and n.startswith("blk."))  # fmt: skip
        assert layers == every[::2]

    def tensors(paths) -> dict[str, tuple[str, bytes]]:
        # the tests' reader: what GGUFReader gives (tests/support/test_gguf_support.py), but
        # GGUFReader's per-token views take seconds on each of these ~20 files
        out = {}
        for path in paths:
            for t in read_gguf_tensors(path).values():
                out[t.name] = (t.tensor_type.name, bytes(t.data.tobytes()))
        return out

    # llama.cpp's quantizer: every tensor at Q8_0, and every probed tensor at its probe type
    changed = {n for names in probes.changed.values() for n in names}
    base, low = tmp_path / "base.gguf", tmp_path / "low.gguf"
    quantize_gguf(bf16, base, REFERENCE_TYPE, imatrix=imatrix,
                  tensor_types=dict.fromkeys(probe, REFERENCE_TYPE))  # fmt: skip
    quantize_gguf(
        bf16,
        low,
        REFERENCE_TYPE,
        imatrix=imatrix,
        tensor_types={n: probe[n] if n in changed else REFERENCE_TYPE for n in probe},
    )
    theirs_base, theirs_low = tensors([base]), tensors([low])
    assert theirs_low["blk.2.ffn_down.weight"][0] == "Q4_K"
    assert theirs_low["blk.0.ffn_down.weight"][0] == "IQ2_XS"
    for role in ["baseline", *probes.roles]:
        linked = probes.probe({role}, role)
        shards = sorted(linked.parent.glob("*.gguf"))
        assert len(shards) == len(probes.shards) and all(p.is_symlink() for p in shards)
        mine = probes.changed.get(role, ())
        expected = {n: theirs_low[n] if n in mine else theirs_base[n] for n in theirs_base}
        assert tensors(shards) == expected, role
    direct = tmp_path / "direct.gguf"
    quantize_gguf(bf16, direct, REFERENCE_TYPE, imatrix=imatrix,
                  tensor_types={n: probe[n] if n in probes.changed["attn_v"] else REFERENCE_TYPE
                                for n in probe})  # fmt: skip
    a = evaluate_artifact(probes.probe({"attn_v"}, "attn_v"), source, max_chunks=1,
                          use_cache=False)  # fmt: skip
    b = evaluate_artifact(direct, source, max_chunks=1, use_cache=False)
    assert a.kld_mean == b.kld_mean and a.perplexity == b.perplexity
    probes.remove()
    assert not (tmp_path / "auto-probe").exists()
