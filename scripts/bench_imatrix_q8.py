#!/usr/bin/env python3
"""The importance matrix drawn elsewhere than llama.cpp on the BF16 GGUF (llama-imatrix's
way): from a Q8_0 GGUF (quantkit until session 16), and from the shards layer by layer
(`--imatrix auto` now, backends/gguf/imatrix/source_pass.py): how different each matrix
is, and what that changes in the quantized model (issue #13).

All matrices from the same calibration chunks, their per-column means compared with the
BF16 file's, then each type quantized from the shards with each matrix
(quantkit.backends.gguf.stream_quantize) and measured against the source by
quantkit.evaluation.measure (shipped eval corpus, n_ctx 512). "X - BF16": the mean of
per-chunk differences, ± its standard error over the chunks.

    .venv/bin/python scripts/bench_imatrix_q8.py [--models demo] [--quants Q4_K_M,IQ4_XS]
        [--write-doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "scripts")]

from bench_imatrix import CACHE, METRICS, measure, model_path, paired  # noqa: E402

SECTION = "bench_imatrix_q8"


def matrix_difference(bf16, q8) -> str:
    """Relative difference of the per-column means over every entry's columns."""
    diffs = []
    for name, entry in bf16.entries.items():
        a, b = entry.mean(), q8.entries[name].mean()
        diffs.append(np.abs(b - a) / np.maximum(np.abs(a), 1e-30))
    rel = np.concatenate(diffs)
    return (f"relative difference of the per-column means over {rel.size:,} columns: "
            f"median {np.median(rel):.2e}, p99 {np.quantile(rel, 0.99):.2e}, "
            f"max {rel.max():.2e}")  # fmt: skip


def bench_model(label: str, quants: list[str], work: Path) -> tuple[list[str], str]:
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.backends.gguf.imatrix.compute import (
        CHUNK_SIZE,
        compute_imatrix,
        prepare_imatrix_data,
    )
    from quantkit.backends.gguf.imatrix.request import DEFAULT_SAMPLES
    from quantkit.backends.gguf.imatrix.source_pass import compute_imatrix_from_source
    from quantkit.backends.gguf.stream_quantize import quantize_from_shards
    from quantkit.source.model import load_source

    source = load_source(model_path(label))
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=DEFAULT_SAMPLES,
                                chunk_size=CHUNK_SIZE, seed=0)  # fmt: skip
    matrices, seconds = {}, {}
    for kind in ("BF16", "Q8_0"):
        model = export_gguf(source, work / f"{label}-{kind}.gguf", out_type=kind).path
        tick = time.perf_counter()
        matrices[kind] = compute_imatrix(model, data)
        seconds[kind] = time.perf_counter() - tick
        model.unlink()
    tick = time.perf_counter()
    matrices["shards"] = compute_imatrix_from_source(source, data)
    seconds["shards"] = time.perf_counter() - tick
    summary = "; ".join(
        f"{label}, {kind} against BF16: {matrix_difference(matrices['BF16'], matrices[kind])}"
        for kind in ("Q8_0", "shards")
    ) + "; computed in " + ", ".join(f"{s:.1f} s ({k})" for k, s in seconds.items())
    rows = []
    for quant in quants:
        measured = {}
        for kind, matrix in matrices.items():
            out = work / f"{label}-{quant}-{kind}.gguf"
            quantize_from_shards(source, out, quant, imatrix=matrix, imatrix_file="m")
            measured[kind] = measure(out, source)
            out.unlink()
        chunks = measured["BF16"][0].chunks
        for kind in matrices:
            r = measured[kind][0]
            change = " | ".join(
                fmt.format(*paired(measured[kind][1][i], measured["BF16"][1][i], chunks))
                for _, i, fmt in METRICS
            ) if kind != "BF16" else " |  | "  # fmt: skip
            rows.append(f"| {label} | {quant} | {kind} | {r.kld_mean:.4f} | {r.kld_p99:.3f} | "
                        f"{r.top1_agreement:.1%} | {change} |")  # fmt: skip
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    from bench_convert import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo")
    parser.add_argument("--quants", default="Q4_K_M,IQ4_XS,Q3_K_M")
    parser.add_argument("--work", type=Path, default=CACHE / "bench-imatrix-q8")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, summaries = [], []
    for label in args.models.split(","):
        model_rows, summary = bench_model(label, args.quants.split(","), args.work)
        rows += model_rows
        summaries.append(summary)
    command = "python scripts/bench_imatrix_q8.py " + " ".join(argv or sys.argv[1:])
    body = "\n".join([
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine()}.",
        "",
        *[f"- {s}." for s in summaries],
        "",
        "| model | type | matrix from | KLD mean | KLD p99 | top-1 | X - BF16: KLD | NLL "
        "| top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
