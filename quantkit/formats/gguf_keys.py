"""GGUF metadata keys that gguf-py's `gguf.Keys` does not define; every other key quantkit
reads or writes is taken from `gguf.Keys` itself.

llama-quantize (llama.cpp tools/quantize/quantize.cpp, LLM_KV_QUANTIZE_IMATRIX_*) records the
importance matrix it was given under `quantize.imatrix.*`; gguf-py has no constants for them
because only the C++ tool writes them. quantkit writes the same keys (as llama.cpp kv
overrides) so its quants carry the same provenance as llama-quantize's.
"""

from __future__ import annotations

QUANTIZE_IMATRIX_FILE = "quantize.imatrix.file"
QUANTIZE_IMATRIX_DATASET = "quantize.imatrix.dataset"
QUANTIZE_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
QUANTIZE_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
