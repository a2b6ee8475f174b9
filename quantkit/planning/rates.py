"""How fast this machine does each stage of a convert, for planning.cost's time estimates.

A rate is units of a stage's work per second: bytes written, elements quantized,
parameter-tokens evaluated (one token through one parameter's multiply-add). Every convert
that completes records the rate of each stage it timed in the cache (`rates.json` under
QUANTKIT_CACHE), so the second estimate on a machine uses its own figures; until then the
reference machine's (2 cores of an AMD EPYC, measured by scripts/bench_scale.py at the 1B
and 8B shapes, docs/benchmarks.md) stand in.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..disk.atomic import building_file
from ..disk.cache import cache_dir

log = logging.getLogger(__name__)
RATES_FILE = "rates.json"
SHORTEST_TIMED_S = 2.0  # a stage over faster than this says little about the rate
REFERENCE_MACHINE = "the reference machine (2-core AMD EPYC, docs/benchmarks.md)"

# Units per second on the reference machine; a key not listed falls back to its family's
# entry (drop the last ":part"), e.g. quantize:Q5_K_M to quantize. Measured by
# `scripts/bench_scale.py --shapes 8b --paths gguf,fp8` (the 8B shape: 8.03e9 parameters,
# 16.06 GB) and, for what only the 1B shape runs (a float32 evaluation below 2B
# parameters, the BF16 safetensors path), `--shapes 1b` (docs/benchmarks.md, "Real sizes").
REFERENCE_RATES: dict[str, float] = {
    "write:gguf:Q8_0": 2.9e8,  # bytes of source read, converted and written
    "write:gguf": 6.0e8,  # BF16, F16: copied or widened, not quantized
    "write:safetensors": 6.0e8,
    "write": 2.9e8,
    # parameter-tokens through the streamed model's decoder (the importance matrix); float32
    # (below 2B) not measured on its own: the float32 reference's rate
    "imatrix:bfloat16": 1.6e11,
    "imatrix:float32": 7.7e10,
    "quantize": 1.9e7,  # elements (K-quants with an importance matrix)
    "checks:gguf": 6.5e9,  # parameter-tokens of the 48-token reply, with everything else
    "checks:FP8_DYNAMIC": 2.3e9,  # the reply decompresses (and spills) every layer
    "checks": 4.6e9,
    "reference:bfloat16": 1.7e11,  # parameter-tokens through the streamed model
    "reference:float32": 7.7e10,
    "reference": 1.7e11,
    "eval:gguf": 1.1e11,
    "eval:FP8_DYNAMIC:bfloat16": 1.3e11,
    "eval:FP8_DYNAMIC:float32": 6.8e10,
    "eval:BF16:float32": 8.0e10,
    "eval": 1.3e11,
    "fp8_tensors": 8.0e7,  # parameters
    "calibrate": 5e9,  # not measured here: llmcompressor's oneshot on a CPU
    "mlx_convert": 5e7,  # not measured here
    "overhead": 2.1e8,  # bytes of source: loading, tokenizing, the steps without progress
}


@dataclass(frozen=True)
class Rates:
    measured: Mapping[str, float]
    origin: str

    def rate(self, key: str) -> float:
        """The rate for `key` ("eval:gguf:Q4_K_M"), else for its nearest family
        ("eval:gguf", then "eval"): this machine's measurement first, at every level."""
        parts = key.split(":")
        for depth in range(len(parts), 0, -1):
            name = ":".join(parts[:depth])
            for candidates in (self.measured, REFERENCE_RATES):
                if candidates.get(name):
                    return float(candidates[name])
        return REFERENCE_RATES["eval"]


def load_rates() -> Rates:
    """This machine's measured rates over the reference machine's."""
    measured = _read()
    if not measured:
        return Rates({}, REFERENCE_MACHINE)
    when = time.strftime("%Y-%m-%d", time.localtime(max(v["when"] for v in measured.values())))
    return Rates({k: v["rate"] for k, v in measured.items()},
                 f"this machine (measured by converts up to {when}; "
                 f"{REFERENCE_MACHINE} for stages not run yet)")  # fmt: skip


def record_rates(stages: Iterable[Any], seconds: Mapping[str, float]) -> None:
    """Keep the rate of every estimated stage (planning.cost.StageCost) the convert timed
    (label -> seconds), for the next estimate. Best effort: a cache that cannot be written
    costs nothing but the figures."""
    measured = _read()
    now = time.time()
    for stage in stages:
        took = seconds.get(stage.label, 0.0)
        if stage.rate_key and stage.work > 0 and took >= SHORTEST_TIMED_S:
            measured[stage.rate_key] = {"rate": stage.work / took, "when": now}
    path = cache_dir(RATES_FILE)
    try:
        with building_file(path, per_process=True) as tmp:  # other converts may write too
            tmp.write_text(json.dumps(measured, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as exc:
        log.debug("could not record stage rates in %s: %s", path, exc)


def _read() -> dict[str, dict[str, float]]:
    path = cache_dir(RATES_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and _valid(v)}


def _valid(entry: dict) -> bool:
    rate, when = entry.get("rate"), entry.get("when")
    return isinstance(rate, int | float) and rate > 0 and isinstance(when, int | float)
