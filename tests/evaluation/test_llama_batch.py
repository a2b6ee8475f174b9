"""quantkit.evaluation.llama_batch: several chunks per llama_decode give the logits that one
chunk per fresh context gives (llama-cpp-python's high-level `Llama.eval`, which quantkit
used before, computed here independently), flash attention on in both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantkit.runtime.memory import (
    FA_QUERY_TILE,
    LOGITS_BUDGET,
    MOST_SEQUENCES,
    sequences_per_batch,
    sequences_sharing_a_ubatch,
)

# Short chunks keep the test cheap. At 128 tokens two chunks share a ubatch (64 queries
# each, one flash-attention tile): the smallest length where the batching rule matters.
N_CTX = 128
ROWS = slice(N_CTX // 2, N_CTX - 1)  # the rows quantkit scores


def test_sequences_per_batch_keeps_the_logits_under_the_budget() -> None:
    for rows, vocab in ((255, 49_152), (255, 128_256), (255, 151_936), (1023, 128_256)):
        n_ctx = 2 * (rows + 1)
        n = sequences_per_batch(rows, vocab, n_ctx)
        assert 1 <= n <= MOST_SEQUENCES and n * rows * vocab * 4 <= LOGITS_BUDGET
        most = max(k for k in range(1, MOST_SEQUENCES + 1) if k * rows * vocab * 4 <= LOGITS_BUDGET)
        assert n == sequences_sharing_a_ubatch(n_ctx, most)
    assert sequences_per_batch(255, 49_152, 512) == MOST_SEQUENCES  # the demo: the full batch
    # Qwen3's vocabulary: the budget holds 3 chunks, but 512 / 3 is not whole: 2
    assert sequences_per_batch(255, 151_936, 512) == 2
    assert sequences_per_batch(4095, 128_256, 8192) == 1  # one chunk is over the budget: alone


def test_each_chunk_gets_a_whole_share_of_a_ubatch_of_at_least_one_tile() -> None:
    # n_ctx 512: 4 x 128 queries, as llama-perplexity -c 512 -b 2048
    assert sequences_sharing_a_ubatch(512, MOST_SEQUENCES) == 4
    assert sequences_sharing_a_ubatch(128, MOST_SEQUENCES) == 2  # 2 x 64, not 4 x 32
    assert sequences_sharing_a_ubatch(200, MOST_SEQUENCES) == 2  # 3 x 66 would leave 2 over
    assert sequences_sharing_a_ubatch(96, MOST_SEQUENCES) == 1
    assert sequences_sharing_a_ubatch(8, MOST_SEQUENCES) == 1  # below a tile: alone
    assert sequences_sharing_a_ubatch(512, 3) == 2  # the budget's cap, then the rule
    for n_ctx in range(8, 2050, 2):
        n = sequences_sharing_a_ubatch(n_ctx, MOST_SEQUENCES)
        assert n == 1 or (n_ctx % n == 0 and n_ctx // n >= FA_QUERY_TILE)
    assert sequences_per_batch(63, 49_152, 128) == 2  # the budget allows 4; the rule, 2


def _one_at_a_time(gguf: Path, chunks: list[list[int]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                logits_all=True, n_threads=2, flash_attn=True, verbose=False)  # fmt: skip
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
    assert engine.batch_chunks(ROWS.stop - ROWS.start) == 2
    engine.load()
    try:
        # full batches, then a last one holding fewer chunks than the context has sequences
        # (copied: the next call overwrites them, the engine reuses its output buffer)
        got = [rows.copy() for rows in engine.logits_batch(chunks[:2], ROWS)]
        got += [rows.copy() for rows in engine.logits_batch(chunks[2:4], ROWS)]
        got += [rows.copy() for rows in engine.logits_batch(chunks[4:], ROWS)]
        whole = engine.logits(chunks[0])
    finally:
        engine.close()
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.shape == theirs.shape and len(mine) == ROWS.stop - ROWS.start
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4)
    assert whole.shape == (N_CTX, expected[0].shape[1])
    np.testing.assert_allclose(whole[ROWS], expected[0], rtol=0, atol=1e-4)
