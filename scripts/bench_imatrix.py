#!/usr/bin/env python3
"""The effect of an importance matrix on GGUF K-quants, and interop with llama.cpp's tools.

For each model: write the BF16 GGUF, compute the imatrix as `quantkit convert --imatrix
auto` does (default settings: 8 calibration samples, 512-token chunks), quantize each type
with and without it through llama.cpp, and measure both against the source with
quantkit.evaluate (shipped eval corpus, held out from the calibration mix; n_ctx 512).
The "with - without" column is the mean of per-chunk KLD differences with its standard
error (chunks are the independent unit; tokens inside a chunk are correlated).

With `--llama-bin DIR` (llama-imatrix and llama-quantize built from the llama-cpp-python
0.3.36 sdist, see docs/formats.md) it also checks interop on the first model: llama-imatrix
re-writes quantkit's file; llama-quantize quantizes with it; llama-imatrix computes one on
the same text, which is compared with quantkit's.

    .venv/bin/python scripts/bench_imatrix.py [--models demo,llama31]
        [--quants Q4_K_M,Q3_K_M,IQ4_XS] [--llama-bin DIR] [--write-doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the fixture builders live with the tests
sys.path.insert(0, str(REPO_ROOT / "scripts"))
CACHE = REPO_ROOT / ".cache" / "test-fixtures"
os.environ.setdefault("QUANTKIT_CACHE", str(CACHE / "quantkit-cache"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SECTION = "bench_imatrix"


def model_path(label: str) -> Path:
    if label == "demo":
        from quantkit.demo import ensure_demo_model

        return ensure_demo_model(CACHE / "demo")
    from fixture_models import ensure_llama31_model, ensure_qwen3_model

    return {"llama31": ensure_llama31_model, "qwen3": ensure_qwen3_model}[label](CACHE)


def measure(path: Path, source: Any) -> tuple[Any, Any]:
    """quantkit.evaluate's report and its per-token KLD (kept from the report step)."""
    import quantkit.evaluate as ev

    kept: list = []
    original = ev._report

    def keep(scores, ref, **info):
        kept.append(scores)
        return original(scores, ref, **info)

    ev._report = keep
    try:
        report = ev.evaluate_artifact(path, source)
    finally:
        ev._report = original
    return report, kept[0][1]


def paired(with_kld, without_kld, chunks: int) -> tuple[float, float]:
    diff = (with_kld - without_kld).reshape(chunks, -1).mean(axis=1)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(chunks))


def bench_model(label: str, quants: list[str], work: Path) -> tuple[list[str], dict]:
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.backends.gguf_export import export_gguf
    from quantkit.backends.gguf_pipeline import tensor_type_counts
    from quantkit.imatrix import save_imatrix
    from quantkit.imatrix_compute import CHUNK_SIZE, compute_imatrix, prepare_imatrix_data
    from quantkit.imatrix_request import DEFAULT_SAMPLES
    from quantkit.source import load_source

    source = load_source(model_path(label))
    bf16 = work / f"{label}-BF16.gguf"
    export_gguf(source, bf16, out_type="BF16")
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=DEFAULT_SAMPLES,
                                chunk_size=CHUNK_SIZE, seed=0)  # fmt: skip
    tick = time.perf_counter()
    imatrix = compute_imatrix(bf16, data)
    seconds = time.perf_counter() - tick
    matrix_file = save_imatrix(imatrix, work / f"{label}.imatrix.gguf")
    rows = []
    for quant in quants:
        measured = {}
        for tag, matrix in (("no", None), ("yes", imatrix)):
            out = work / f"{label}-{quant}-{tag}.gguf"
            quantize_gguf(bf16, out, quant, imatrix=matrix, imatrix_file=matrix_file.name)
            measured[tag] = (out, *measure(out, source))
        delta, se = paired(measured["yes"][2], measured["no"][2], measured["yes"][1].chunks)
        for tag in ("no", "yes"):
            out, r, _ = measured[tag]
            types = " ".join(f"{k}:{v}" for k, v in sorted(tensor_type_counts(out).items()))
            change = f"{delta:+.4f} ± {se:.4f}" if tag == "yes" else ""
            rows.append(
                f"| {label} | {quant} | {tag} | {out.stat().st_size / 1e6:,.1f} | {types} | "
                f"{r.perplexity:.3f} ({r.reference_perplexity:.3f}) | {r.kld_mean:.4f} | "
                f"{r.kld_p99:.3f} | {r.top1_agreement:.1%} | {change} |"
            )
            out.unlink() if tag == "no" else None
    info = {
        "model": f"{source.name} ({source.geometry.architecture}, "
        f"{source.parameter_count / 1e6:,.0f}M parameters)",
        "imatrix": f"{len(imatrix.entries)} entries, {imatrix.chunk_count} chunks of "
        f"{imatrix.chunk_size} tokens, computed in {seconds:.1f} s",
        "bf16": bf16,
        "matrix_file": matrix_file,
        "source": source,
        "data": data,
    }
    return rows, info


def interop(bin_dir: Path, info: dict, work: Path) -> list[str]:
    """llama-imatrix and llama-quantize against quantkit's file and computation."""
    import numpy as np

    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.imatrix import load_imatrix
    from quantkit.imatrix_compute import ImatrixData, compute_imatrix

    bf16, ours = info["bf16"], info["matrix_file"]
    lines = []

    def run(*args: object) -> None:
        subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)

    rewritten = work / "rewritten.imatrix.gguf"
    run(bin_dir / "llama-imatrix", "-m", bf16, "--in-file", ours, "-o", rewritten)
    same = rewritten.read_bytes() == ours.read_bytes()
    verdict = "byte-identical" if same else "DIFFERENT"
    lines.append(f"- `llama-imatrix --in-file {ours.name} -o out.gguf` (read, then write "
                 f"back): {verdict} to quantkit's file.")  # fmt: skip

    theirs_q, ours_q = work / "llama-quantize-Q4_K_M.gguf", work / "quantkit-Q4_K_M.gguf"
    run(bin_dir / "llama-quantize", "--imatrix", ours, bf16, theirs_q, "Q4_K_M", "2")
    quantize_gguf(bf16, ours_q, "Q4_K_M", imatrix=load_imatrix(ours), imatrix_file=str(ours))
    same = theirs_q.read_bytes() == ours_q.read_bytes()
    lines.append(f"- `llama-quantize --imatrix {ours.name} ... Q4_K_M` vs quantkit's "
                 f"llama_model_quantize call with the same file: "
                 f"{'byte-identical GGUFs' if same else 'DIFFERENT files'} "
                 "(tensors and metadata, `quantize.imatrix.*` included).")  # fmt: skip

    # Both computations on the same text: quantkit's chunks, detokenized, as a text file.
    import llama_cpp
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(info["source"].tokenizer.folder / "tokenizer.json"))
    text = "".join(tokenizer.decode(list(c), skip_special_tokens=False)
                   for c in info["data"].chunks)  # fmt: skip
    text_file = work / "calibration.txt"
    text_file.write_text(text, encoding="utf-8")
    vocab = llama_cpp.Llama(model_path=str(bf16), vocab_only=True, verbose=False)
    ids = vocab.tokenize(text.encode(), add_bos=info["source"].tokenizer.add_bos, special=True)
    n = 512
    chunks = tuple(tuple(ids[i * n : (i + 1) * n]) for i in range(len(ids) // n))
    tick = time.perf_counter()
    mine = compute_imatrix(bf16, ImatrixData(chunks, n, str(text_file)))
    mine_s = time.perf_counter() - tick
    theirs_file = work / "llama-imatrix.gguf"
    tick = time.perf_counter()
    run(bin_dir / "llama-imatrix", "-m", bf16, "-f", text_file, "-o", theirs_file, "-c", n,
        "-b", n, "--parse-special", "--no-ppl", "-t", os.cpu_count() or 1)  # fmt: skip
    theirs_s = time.perf_counter() - tick
    theirs = load_imatrix(theirs_file)
    names = set(theirs.entries) == set(mine.entries)
    counts = all((theirs.entries[k].counts == mine.entries[k].counts).all()
                 for k in theirs.entries if k in mine.entries)  # fmt: skip
    rel = np.concatenate([
        (np.abs(mine.entries[k].sums - e.sums) / e.sums).reshape(-1)
        for k, e in theirs.entries.items() if k in mine.entries
    ])  # fmt: skip
    lines.append(
        f"- llama-imatrix and quantkit on the same {len(chunks)} chunks of 512 tokens: "
        f"{'the same' if names else 'DIFFERENT'} {len(theirs.entries)} entry names, "
        f"{'equal' if counts else 'DIFFERENT'} counts, chunk count {theirs.chunk_count} vs "
        f"{mine.chunk_count}; sums per column differ by {np.median(rel):.2%} (median), "
        f"{np.percentile(rel, 99):.2%} (99th percentile), {rel.max():.1%} (max). Time: "
        f"llama-imatrix {theirs_s:.1f} s, quantkit {mine_s:.1f} s."
    )
    from_theirs = work / "Q4_K_M-llama-imatrix.gguf"
    quantize_gguf(bf16, from_theirs, "Q4_K_M", imatrix=theirs, imatrix_file=theirs_file.name)
    from_mine = work / "Q4_K_M-quantkit-same-text.gguf"
    quantize_gguf(bf16, from_mine, "Q4_K_M", imatrix=mine, imatrix_file="same-text")
    a, _ = measure(from_theirs, info["source"])
    b, _ = measure(from_mine, info["source"])
    lines.append(f"- Q4_K_M quantized with llama-imatrix's matrix: KLD {a.kld_mean:.4f}, "
                 f"perplexity {a.perplexity:.3f}; with quantkit's from the same text: KLD "
                 f"{b.kld_mean:.4f}, perplexity {b.perplexity:.3f}.")  # fmt: skip
    return lines


def write_section(doc: Path, body: str) -> None:
    begin, end = f"<!-- BEGIN {SECTION} -->", f"<!-- END {SECTION} -->"
    block = f"{begin}\n{body}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from bench_convert import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,llama31")
    parser.add_argument("--quants", default="Q4_K_M,Q3_K_M,IQ4_XS")
    parser.add_argument("--llama-bin", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=CACHE / "bench-imatrix")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, infos = [], []
    for label in args.models.split(","):
        model_rows, info = bench_model(label, args.quants.split(","), args.work)
        rows += model_rows
        infos.append(info)
    interop_lines = interop(args.llama_bin, infos[0], args.work) if args.llama_bin else []
    command = "python scripts/bench_imatrix.py " + " ".join(argv or sys.argv[1:])
    body = "\n".join([
        "## Importance matrix: K-quants with and without (scripts/bench_imatrix.py)",
        "",
        "What: each type quantized by llama.cpp from the same BF16 GGUF, without and with the "
        "importance matrix `quantkit convert --imatrix auto` computes (default settings), "
        "measured against the source by quantkit.evaluate (shipped eval corpus, held out "
        "from the calibration mix; n_ctx 512, 9 chunks). \"with - without\": mean of the "
        "per-chunk KLD differences ± its standard error (negative = better with).",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine()} (shared with other jobs: times are indicative).",
        "",
        *[f"- {i['model']}: imatrix {i['imatrix']}." for i in infos],
        "",
        "| model | type | imatrix | MB | tensor types | perplexity (source) | KLD mean | "
        "KLD p99 | top-1 | with - without (KLD) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Same types with and without: llama.cpp picks the same tensor types except for IQ4_XS, "
        "which without a matrix keeps the first ffn_down layers at Q5_K. The demo model is "
        "a trained model; the llama31 fixture has random weights (hence its perplexity near "
        "the vocabulary size), without the activation outliers a matrix exploits, and shows "
        "the path on a Llama-3.1-shaped model whose dimensions take K-quants without "
        "fallbacks.",
        *(["", "Interop with llama.cpp's own tools (built from the llama-cpp-python 0.3.36 "
           "sdist), on the first model:", "", *interop_lines] if interop_lines else []),
    ])  # fmt: skip
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
