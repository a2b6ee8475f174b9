"""quantkit.evaluation.llama_batch: several chunks per llama_decode give the logits that one
chunk per fresh context gives (llama-cpp-python's high-level `Llama.eval`, which quantkit
used before, computed here independently)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantkit.evaluation.llama_batch import LOGITS_BUDGET, MOST_SEQUENCES, sequences_per_batch

N_CTX = 128  # short chunks keep the test cheap; the batching does not depend on the length
ROWS = slice(N_CTX // 2, N_CTX - 1)  # the rows quantkit scores


def test_sequences_per_batch_keeps_the_logits_under_the_budget() -> None:
    for rows, vocab in ((255, 49_152), (255, 128_256), (255, 151_936), (1023, 128_256)):
        n = sequences_per_batch(rows, vocab)
        assert 1 <= n <= MOST_SEQUENCES and n * rows * vocab * 4 <= LOGITS_BUDGET
        assert n == MOST_SEQUENCES or (n + 1) * rows * vocab * 4 > LOGITS_BUDGET
    assert sequences_per_batch(255, 49_152) == MOST_SEQUENCES  # the demo: the full batch
    assert sequences_per_batch(4095, 128_256) == 1  # one chunk is over the budget: alone


def _one_at_a_time(gguf: Path, chunks: list[list[int]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                logits_all=True, n_threads=2, verbose=False)  # fmt: skip
    try:
        out = []
        for ids in chunks:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[ROWS], dtype=np.float32))
        return out
    finally:
        llm.close()


@pytest.mark.slow
def test_batched_logits_equal_one_chunk_at_a_time(demo_q8: Path) -> None:
    from quantkit.evaluation.corpus import build_stream, load_corpus
    from quantkit.evaluation.engines import LlamaCppEngine

    engine = LlamaCppEngine(demo_q8, n_ctx=N_CTX, n_threads=2)
    stream = build_stream(load_corpus(None), engine)
    chunks = [list(stream.ids[i * N_CTX : (i + 1) * N_CTX]) for i in range(5)]
    expected = _one_at_a_time(demo_q8, chunks)
    assert engine.batch_chunks(ROWS.stop - ROWS.start) == MOST_SEQUENCES
    engine.load()
    try:
        # a full batch, then a last one holding fewer chunks than the context has sequences
        # (copied: the next call overwrites them, the engine reuses its output buffer)
        got = [rows.copy() for rows in engine.logits_batch(chunks[:4], ROWS)]
        got += [rows.copy() for rows in engine.logits_batch(chunks[4:], ROWS)]
        whole = engine.logits(chunks[0])
    finally:
        engine.close()
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.shape == theirs.shape and len(mine) == ROWS.stop - ROWS.start
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4)
    assert whole.shape == (N_CTX, expected[0].shape[1])
    np.testing.assert_allclose(whole[ROWS], expected[0], rtol=0, atol=1e-4)
