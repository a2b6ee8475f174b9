"""The effect of the importance matrix, measured honestly: on the demo model (real trained
weights), Q4_K_M and Q3_K_M made with and without the default `--imatrix auto` matrix,
each measured against the source with quantkit.evaluate on the shipped eval corpus (held
out from the calibration mix: tests/test_evaluate.py checks that no run of ten words is in
both)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantkit.source import load_source

pytest.importorskip("llama_cpp")


def _paired(metric_with: np.ndarray, metric_without: np.ndarray, chunks: int) -> tuple:
    """Mean per-chunk difference (with - without) and its standard error: tokens inside a
    chunk are correlated, chunks much less so."""
    diff = (metric_with - metric_without).reshape(chunks, -1).mean(axis=1)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(chunks))


@pytest.fixture(scope="module")
def measured(demo_model: Path, tmp_path_factory) -> dict:
    import quantkit.evaluate as evaluate_module
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.backends.gguf_export import export_gguf
    from quantkit.imatrix_compute import CHUNK_SIZE, compute_imatrix, prepare_imatrix_data
    from quantkit.imatrix_request import DEFAULT_SAMPLES

    source = load_source(demo_model)
    folder = tmp_path_factory.mktemp("effect")
    bf16 = folder / "demo-BF16.gguf"
    export_gguf(source, bf16, out_type="BF16")
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=DEFAULT_SAMPLES,
                                chunk_size=CHUNK_SIZE, seed=0)  # fmt: skip
    imatrix = compute_imatrix(bf16, data)
    captured: list = []
    original = evaluate_module._report

    def keep_scores(scores, ref, **info):
        captured.append(scores)
        return original(scores, ref, **info)

    results: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_module, "_report", keep_scores)
        for quant in ("Q4_K_M", "Q3_K_M"):
            for label, matrix in (("without", None), ("with", imatrix)):
                path = folder / f"demo-{quant}-{label}.gguf"
                quantize_gguf(bf16, path, quant, imatrix=matrix, imatrix_file="demo.imatrix")
                report = evaluate_module.evaluate_artifact(path, source)
                nll, kld, _, _ = captured.pop()
                results[quant, label] = (report, nll, kld)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["Q4_K_M", "Q3_K_M"])
def test_with_the_imatrix_it_is_not_worse(measured: dict, quant: str) -> None:
    """Not worse = the mean per-chunk difference (with - without) of KL divergence and of
    token NLL (log perplexity) is not above two standard errors of those differences."""
    with_, nll_w, kld_w = measured[quant, "with"]
    without, nll_o, kld_o = measured[quant, "without"]
    assert with_.chunks == without.chunks >= 5 and with_.corpus == without.corpus
    for name, a, b in (("KLD", kld_w, kld_o), ("NLL", nll_w, nll_o)):
        mean, se = _paired(a, b, with_.chunks)
        assert mean <= 2 * se, f"{quant} {name}: with - without = {mean:.5f} (SE {se:.5f})"
    # the two files differ only in how llama.cpp rounded, not in the types it chose
    assert with_.kld_mean <= without.kld_mean or math.isclose(with_.kld_mean, without.kld_mean)
