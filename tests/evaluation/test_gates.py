"""quantkit.evaluation.gates: top-1 agreement is judged where the source is confident.

On a random-weight model every next-token distribution is nearly flat (the llama31 fixture's
top token holds ~6e-5 of the probability, 1e-5 ahead of the second), so argmax flips under
any rounding and plain top-1 agreement is noise: its Q4_K_M used to fail the gate on top-1
with a mean KLD of 0.006. On the trained demo model most positions are confident and top-1
is judged there. docs/quality.md, "Top-1 agreement", has the rule and the measurements.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.evaluation.gates import MIN_CONFIDENT_POSITIONS, check_gate
from quantkit.evaluation.options import EvalOptions
from quantkit.evaluation.report import CONFIDENCE_MARGIN

NO_EVAL = EvalOptions(enabled=False)
N_CTX = 512
CHUNKS = 2  # 510 scored positions; the gates assume the full run, but the verdicts hold here
TOKENS = CHUNKS * (N_CTX // 2 - 1)


def _gguf(source: Path, quant: str, out: Path) -> Path:
    import quantkit

    return quantkit.convert(
        source, out=out, format="gguf", quant=quant, verify=False, evaluation=NO_EVAL
    ).out


def _evaluate(artifact: Path, source: Path):
    from quantkit.evaluation.measure import evaluate_artifact

    return evaluate_artifact(artifact, source, n_ctx=N_CTX, max_chunks=CHUNKS)


@pytest.fixture(scope="module")
def llama31_q4(llama31_model: Path, tmp_path_factory):
    return _evaluate(_gguf(llama31_model, "Q4_K_M", tmp_path_factory.mktemp("l31") / "q4"),
                     llama31_model)  # fmt: skip


@pytest.fixture(scope="module")
def demo_q4(demo_artifact_cached: Path, demo_model: Path):
    return _evaluate(demo_artifact_cached, demo_model)


def _dict(top1: float, confident: int | None, confident_top1: float | None) -> dict:
    report = {
        "ppl_ratio": 1.01,
        "kld_mean": 0.01,
        "top1_agreement": top1,
        "parameters": 135_000_000,
        "tokens": 2295,
    }
    if confident is not None:
        report.update(confident_positions=confident, top1_agreement_confident=confident_top1)
    return report


def test_top1_is_judged_on_confident_positions_with_their_count() -> None:
    judged = check_gate(_dict(0.61, 1204, 0.95), "Q4_K_M")
    assert judged.passed and judged.checks[2].value == 0.95 and judged.checks[2].judged
    assert "top1_agreement 0.95 >= 0.82 over 1,204 confident positions of 2,295" in judged.message
    failed = check_gate(_dict(0.95, 1204, 0.75), "Q4_K_M")  # the confident figure decides
    assert not failed.passed
    assert "top1_agreement 0.75 >= 0.82 over 1,204 confident positions of 2,295 FAILED" in (
        failed.message
    )


def test_too_few_confident_positions_is_not_judged_and_does_not_fail() -> None:
    few = MIN_CONFIDENT_POSITIONS - 1
    gate = check_gate(_dict(0.61, few, 0.5), "Q4_K_M")
    top1 = gate.checks[2]
    assert gate.passed and top1.passed and not top1.judged
    assert (
        f"top1_agreement not judged: {few} of 2,295 positions have a confident source "
        f"(top-1 ahead of the second by >= {CONFIDENCE_MARGIN:g}), {MIN_CONFIDENT_POSITIONS} "
        "needed; all positions 0.61" in gate.message
    )
    assert gate.to_dict()["checks"][2]["judged"] is False
    # perplexity and KL divergence are judged as before
    worse = check_gate(dict(_dict(0.61, 0, None), kld_mean=0.2), "Q4_K_M")
    assert not worse.passed and "kld_mean 0.2 <= 0.15 FAILED" in worse.message


def test_a_report_without_confident_counts_is_judged_on_all_positions() -> None:
    """manifest.json files written before the confident figures still gate as they did."""
    gate = check_gate(_dict(0.61, None, None), "Q4_K_M")
    assert not gate.passed and gate.checks[2].judged
    assert gate.message.endswith("top1_agreement 0.61 >= 0.82 FAILED")


@pytest.mark.slow
def test_random_weight_q4_k_m_with_tiny_kld_no_longer_fails_on_top1(llama31_q4) -> None:
    report = llama31_q4
    gate = check_gate(report, "Q4_K_M")
    # what used to fail it: plain top-1 below the bar although the KLD is tiny
    assert report.kld_mean < 0.02 and report.top1_agreement < gate.thresholds.min_top1
    assert report.confident_positions == 0 and report.top1_agreement_confident is None
    assert gate.passed, gate.message
    assert [c.judged for c in gate.checks] == [True, True, False]
    assert f"top1_agreement not judged: 0 of {TOKENS} positions" in gate.message
    assert f"all positions {report.top1_agreement:.4g}" in gate.message
    assert gate.to_check()["evidence"] == gate.message


@pytest.mark.slow
def test_trained_demo_q4_k_m_passes_on_confident_positions(demo_q4) -> None:
    report = demo_q4
    gate = check_gate(report, "Q4_K_M")
    assert gate.passed, gate.message
    # most of a trained model's positions are confident; it agrees more often there
    assert MIN_CONFIDENT_POSITIONS <= report.confident_positions < report.tokens == TOKENS
    assert report.top1_agreement < report.top1_agreement_confident
    assert report.top1_agreement_confident > 0.93  # measured 0.968 (plain 0.874)
    top1 = gate.checks[2]
    assert top1.judged and top1.value == report.top1_agreement_confident
    assert f"over {report.confident_positions} confident positions of {TOKENS}" in gate.message
    data = report.to_dict()
    assert data["top1_agreement"] == report.top1_agreement  # the plain figure stays
    assert data["confidence_margin"] == CONFIDENCE_MARGIN


@pytest.mark.slow
def test_q2_k_presented_as_q4_k_m_still_fails(demo_model, demo_q4, tmp_path) -> None:
    """A real, much worse artifact of the same model: the gate still fails it, and its top-1
    is judged on the same confident positions, well below the Q4_K_M's."""
    report = _evaluate(_gguf(demo_model, "Q2_K", tmp_path / "q2"), demo_model)
    gate = check_gate(report, "Q4_K_M")
    assert not gate.passed
    assert not gate.checks[1].passed  # KLD: measured 0.48 against 0.15
    assert gate.checks[2].judged and report.confident_positions == demo_q4.confident_positions
    assert report.top1_agreement_confident < demo_q4.top1_agreement_confident - 0.1
