#!/usr/bin/env python3
"""The source's reference logits in bfloat16 and in float32, side by side, on this CPU.

quantkit's transformers evaluation (the reference, a safetensors artifact's figures,
--quant auto's probes) computes in float32 below 2B parameters and, above, in bfloat16
only where the CPU computes it natively (quantkit/runtime/cpu.py). This measures why: a
512 x 4096 by 4096 x 14336 matrix product (one Llama-3.1-8B MLP projection over a chunk)
in each dtype, then `compute_reference` over the same chunks of the shipped corpus in each
dtype, each in a process of its own with its process tree's RssAnon sampled.

    python scripts/bench_reference_dtype.py MODEL_FOLDER [--chunks 2] [--write-docs]

MODEL_FOLDER: an HF folder, e.g. the 8b model scripts/bench_scale.py --keep-model leaves.
Reported: tokens/s of each, the ratio float32 / bfloat16 measured in this run, peak
RssAnon, and the reference perplexity each gives (the same text; they differ by
bfloat16's rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_auto_cost import run_sampled  # noqa: E402
from bench_convert import machine, write_section  # noqa: E402

SECTION = "bench_reference_dtype"
CHILD = """
import json, sys, time
import numpy as np
from quantkit.evaluation.corpus import build_stream, load_corpus
from quantkit.evaluation.engines import open_engine
from quantkit.evaluation.measure import compute_reference
folder, dtype, chunks = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = open_engine(folder, n_ctx=512, dtype=dtype)
stream = build_stream(load_corpus(None), engine)
start = time.perf_counter()
ref = compute_reference(engine, stream, 512, chunks, 32)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": chunks * 512,
                  "ppl": float(np.exp(-ref.target.astype(np.float64).mean()))}))
"""
MATMUL = """
import json, time, torch
torch.manual_seed(0)
x, w = torch.randn(512, 4096), torch.randn(14336, 4096)
out = {}
for name in ("float32", "bfloat16"):
    a, b = x.to(getattr(torch, name)), w.to(getattr(torch, name))
    torch.nn.functional.linear(a, b)
    start = time.perf_counter()
    for _ in range(5):
        torch.nn.functional.linear(a, b)
    out[name] = (time.perf_counter() - start) / 5
print(json.dumps(out))
"""


def child(code: str, *args: str) -> tuple[dict, float, int]:
    returncode, out, err, seconds, peak = run_sampled([sys.executable, "-c", code, *args])
    if returncode != 0:
        raise RuntimeError(err.decode(errors="replace")[-3000:])
    return json.loads(out.decode().strip().splitlines()[-1]), seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    matmul, _, _ = child(MATMUL)
    runs = {dtype: child(CHILD, str(args.model), dtype, str(args.chunks))
            for dtype in ("bfloat16", "float32")}  # fmt: skip
    rate = {d: r[0]["tokens"] / r[0]["seconds"] for d, r in runs.items()}
    config = json.loads((args.model / "config.json").read_text(encoding="utf-8"))
    lines = [
        "### Reference dtype: bfloat16 against float32 on this CPU",
        "",
        f"Command: `python scripts/bench_reference_dtype.py MODEL --chunks {args.chunks}` "
        f"(MODEL: hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} "
        f"layers). Machine: {machine()}; load average before: "
        f"{load_before}.",
        "",
        f"Matrix product 512 x 4096 by 4096 x 14336 (mean of 5): float32 "
        f"{matmul['float32']:.3f} s, bfloat16 {matmul['bfloat16']:.3f} s "
        f"({matmul['bfloat16'] / matmul['float32']:.1f}x as long).",
        "",
        "| dtype | reference tokens/s | process wall s | peak RssAnon GB | reference perplexity |",
        "|---|---:|---:|---:|---:|",
        *(f"| {d} | {rate[d]:.1f} | {r[1]:.0f} | {r[2] / 1e9:.2f} | {r[0]['ppl']:.3f} |"
          for d, r in runs.items()),  # fmt: skip
        "",
        f"float32 / bfloat16 throughput in this run: {rate['float32'] / rate['bfloat16']:.2f}x.",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write_docs:
        write_section(ROOT / "docs" / "benchmarks.md", body, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
