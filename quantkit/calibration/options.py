"""What the user says about calibration data: which set, how much of it, how it is drawn.

One object for every scheme that calibrates (FP8 static scales, GPTQ Hessians, the GGUF
importance matrix); each fills in its own defaults where a field is None.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CalibrationOptions:
    source: str | None = None  # "builtin" (None), a .jsonl file, or hf:NAME[:CONFIG]:SPLIT
    samples: int | None = None  # None: 256 for FP8/GPTQ, 8 for an importance matrix
    seq_len: int | None = None  # None: 2048 for FP8/GPTQ, 512 (one chunk) for a matrix
    seed: int = 0
    think_share: float | None = None  # share of <think> samples; None: the mix's own
    tool_share: float | None = None  # share of tool-call samples; None: the mix's own
