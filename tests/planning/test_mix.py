"""--quant auto's weight-free parts: the knapsack, the budgets, the plan's starting mix."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from quantkit.errors import PlanError
from quantkit.planning.budget import (
    FILE,
    GPU,
    Budget,
    budget_for_profile,
    budget_from_bpw,
    check_budget_flags,
    parse_size,
)
from quantkit.planning.mix import (
    BudgetTooSmallError,
    Item,
    Option,
    lower_hull,
    preview_recipe,
    solve,
    tensor_role,
)


def _random_items(rng: random.Random, n: int) -> list[Item]:
    items = []
    for i in range(n):
        sizes = sorted(rng.sample(range(10, 200), 4))
        costs = sorted((rng.random() for _ in sizes), reverse=True)  # bigger is better
        pairs = enumerate(zip(sizes, costs, strict=True))
        options = tuple(Option(f"T{k}", s, c) for k, (s, c) in pairs)
        items.append(Item(f"t{i}", options))
    return items


def _brute_force(items: list[Item], budget: int) -> float:
    best = float("inf")
    for combo in itertools.product(*(i.options for i in items)):
        if sum(o.nbytes for o in combo) <= budget:
            best = min(best, sum(o.cost for o in combo))
    return best


def _cost(items: list[Item], chosen: dict[str, str]) -> tuple[int, float]:
    picked = [next(o for o in i.options if o.ggml_type == chosen[i.name]) for i in items]
    return sum(o.nbytes for o in picked), sum(o.cost for o in picked)


@pytest.mark.parametrize("seed", range(40))
def test_solve_keeps_to_the_budget_and_is_close_to_the_optimum(seed: int) -> None:
    rng = random.Random(seed)
    items = _random_items(rng, 5)
    smallest = sum(min(o.nbytes for o in i.options) for i in items)
    largest = sum(max(o.nbytes for o in i.options) for i in items)
    budget = rng.randint(smallest, largest)
    spent, cost = _cost(items, solve(items, budget))
    optimum = _brute_force(items, budget)
    assert spent <= budget
    # the greedy-on-hull answer is exact up to one tensor's step: never far from the optimum
    worst_step = max(max(o.cost for o in i.options) - min(o.cost for o in i.options) for i in items)
    assert optimum <= cost <= optimum + worst_step


def test_no_single_upgrade_that_fits_is_left_over() -> None:
    rng = random.Random(7)
    items = _random_items(rng, 30)
    budget = sum(sorted(o.nbytes for o in i.options)[1] for i in items)
    chosen = solve(items, budget)
    spent, _ = _cost(items, chosen)
    for item in items:
        current = next(o for o in item.options if o.ggml_type == chosen[item.name])
        for option in item.options:
            if option.cost < current.cost:
                assert spent - current.nbytes + option.nbytes > budget


def test_a_budget_below_the_smallest_mix_says_what_would_fit() -> None:
    items = [Item("a", (Option("Q4_0", 100, 1.0), Option("Q8_0", 200, 0.1)))]
    with pytest.raises(BudgetTooSmallError, match=r"below the smallest mix, 0\.000 GB") as err:
        solve(items, 99)
    assert "Give at least" in str(err.value)


def test_tensors_outside_the_budget_take_their_best_type() -> None:
    items = [
        Item("token_embd.weight", (Option("Q4_0", 100, 1.0), Option("Q8_0", 200, 0.1)), False),
        Item("blk.0.attn_q.weight", (Option("Q4_0", 100, 1.0), Option("Q8_0", 200, 0.1))),
    ]
    assert solve(items, 100) == {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_0"}


def test_lower_hull_drops_the_types_no_budget_prefers() -> None:
    options = [Option("A", 10, 1.0), Option("B", 20, 0.9), Option("C", 30, 0.1),
               Option("D", 40, 0.2)]  # fmt: skip
    # B lies above the segment A-C; D costs more bytes for more error than C
    assert [o.ggml_type for o in lower_hull(options)] == ["A", "C"]


def test_tensor_role() -> None:
    assert tensor_role("blk.12.ffn_down.weight") == "ffn_down"
    assert tensor_role("token_embd.weight") == "token_embd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20GB", 20 * 10**9), ("18.5GiB", int(18.5 * 2**30)), ("900 MB", 900 * 10**6),
     ("123456", 123456), ("1.5G", 1_500_000_000)],
)  # fmt: skip
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_refuses_what_it_cannot_read() -> None:
    with pytest.raises(PlanError, match="Cannot read the size '20 parsecs'"):
        parse_size("20 parsecs")


def test_budget_flags_need_exactly_one_budget() -> None:
    with pytest.raises(PlanError, match="not both"):
        check_budget_flags("20GB", 4.5, has_profile=True)
    with pytest.raises(PlanError, match="needs a budget"):
        check_budget_flags(None, None, has_profile=False)
    check_budget_flags(None, None, has_profile=True)


def test_bpw_budget_counts_every_weight_of_the_file(demo_model: Path) -> None:
    from quantkit.planning import memory as mem
    from quantkit.planning.planner import load_spec

    spec = load_spec(str(demo_model))
    budget = budget_from_bpw(spec, 8.0)
    elements = sum(t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1)
                   for t in mem.gguf_tensors(spec, "BF16"))  # fmt: skip
    assert budget.scope == FILE and budget.bytes > elements  # 8 bits each plus the header
    assert budget.bytes - elements < 3_000_000
    with pytest.raises(PlanError, match="outside 1 to 16"):
        budget_from_bpw(spec, 40)


def test_a_gpu_budget_leaves_the_input_embeddings_out(demo_model: Path) -> None:
    from quantkit.planning.planner import load_spec
    from quantkit.planning.profiles import load_profile

    spec = load_spec(str(demo_model))
    budget = budget_for_profile(spec, load_profile("rtx4090-4bit"), 8192)
    assert budget.scope == GPU and 20e9 < budget.bytes < 25.8e9
    # the demo ties its head to the embeddings: llama.cpp copies them to the GPU, so they count
    assert budget.counts("token_embd", tied_head=True)
    assert not budget.counts("token_embd", tied_head=False)
    cpu = budget_for_profile(spec, load_profile("cpu-64gb"), 8192)
    assert cpu.scope == FILE and cpu.counts("token_embd", tied_head=False)


def test_the_plans_mix_fills_the_budget_without_passing_it(demo_model: Path) -> None:
    from quantkit.planning.planner import load_spec

    spec = load_spec(str(demo_model))
    for size in (75e6, 90e6, 110e6):
        recipe = preview_recipe(spec, Budget(int(size), FILE, "test"))
        assert size * 0.97 <= recipe.expected_bytes <= size
    everything_q8 = preview_recipe(spec, Budget(10**12, FILE, "test"))
    assert set(everything_q8.types.values()) == {"Q8_0"}
    assert everything_q8.file_type == "Q8_0"


def test_the_plans_mix_offers_iq2_only_where_the_imatrix_has_data(llama31_model: Path) -> None:
    """The rows of 512 take IQ2_XS blocks; token_embd and output get no data from quantkit's
    importance matrix, so IQ2_XS is no candidate for them (llama.cpp would refuse it)."""
    from quantkit.formats.gguf_types import IMATRIX_REQUIRED
    from quantkit.planning.planner import load_spec

    recipe = preview_recipe(load_spec(str(llama31_model)), Budget(10**12, FILE, "test"))
    assert "IQ2_XS" in recipe.errors["blk.0.attn_q.weight"]
    for name in ("token_embd.weight", "output.weight"):
        assert "Q2_K" in recipe.errors[name] and not IMATRIX_REQUIRED & set(recipe.errors[name])


def test_file_layout_reads_what_gguf_reader_reads(tmp_path: Path) -> None:
    """FileLayout.read walks the header with quantkit's reader: the same architecture,
    quantizable shapes, fixed bytes and data offset as gguf-py's GGUFReader gives."""
    import gguf
    import numpy as np

    from quantkit.planning.mix import HEADER_SLACK, FileLayout, _aligned, quantizable

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(300)])
    writer.add_tensor("token_embd.weight", np.zeros((300, 256), np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((512, 256), np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    writer.add_tensor("rope_freqs.weight", np.ones(33, np.float32))  # not aligned: padded
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(path)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    fixed = [t for t in reader.tensors if not quantizable(t.name, shapes[t.name])]
    expected = FileLayout(
        "qwen3",
        _aligned(reader.data_offset + HEADER_SLACK),
        sum(_aligned(int(t.n_bytes)) for t in fixed),
        {n: s for n, s in shapes.items() if quantizable(n, s)},
    )
    layout = FileLayout.read(path)
    assert layout == expected
    assert set(layout.shapes) == {"token_embd.weight", "blk.0.attn_q.weight"} and layout.fixed
