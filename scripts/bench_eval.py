#!/usr/bin/env python3
"""Evaluation throughput: quantkit's GGUF scoring side by side with llama.cpp's llama-perplexity.

Both run on the same GGUF (default: the demo model's Q8_0, written by quantkit's GGUF
export), the same tokens and the same threads:

- The text is the shipped eval corpus as plain text (prose and code as they are, chat
  samples flattened to "role: content" lines: llama-perplexity tokenizes without parsing
  control tokens such as <|im_start|>, so a rendered chat would tokenize differently),
  repeated --repeat-text times, written to one file. llama-perplexity reads it with -f,
  quantkit as its corpus (a .txt without `%%` lines is one document). The script checks
  that llama.cpp tokenizes it alike with and without special-token parsing (so both see
  the same ids) and that both report the same chunk count.
- llama-perplexity -c 512 -b 2048 -t THREADS (4 sequences per batch, flash attention
  `auto`, i.e. on for the CPU, as quantkit), and the same with `-fa off`.
- quantkit: quantkit.evaluation.measure.evaluate_artifact against the demo's HF folder.
  The source's reference logits are computed once before the timed runs and cached, so
  the timed runs score the artifact only.

Precision: the same GGUF and text, PRECISION_CHUNKS chunks, decoded by llama.cpp (through
llama-cpp-python, 4 chunks per batch as quantkit does) three ways: all in float32 (F32 KV
cache, no flash attention), the F16 KV cache without flash attention (quantkit's setting
until flash attention was turned on), and flash attention with the default cache
(llama-perplexity's and quantkit's). Reported: the mean and
largest KL divergence of each from the float32 logits over the scored half of every chunk,
and whether a chunk's logits are the same bits decoded with three others or alone.

Throughput is all evaluated tokens (chunks x 512) over the time spent evaluating them:
for quantkit the time in the engine's forward passes (`tokens_per_second` of the report),
for llama-perplexity the time from its "calculating perplexity" line to its final estimate
(its decode and its own scoring; its model load and tokenization are outside). The tools
alternate, in a rotating order, --repeat times; the medians are reported, and the ratio
is quantkit / llama-perplexity per round, then the median. End-to-end times are reported
too: `evaluate_artifact` (tokenizing both sides, reading the cached reference, loading
the model, scoring) and the whole llama-perplexity process.

    .venv/bin/python scripts/bench_eval.py [--gguf FILE --source DIR] [--repeat 4]
        [--repeat-text 2] [--llama-perplexity PATH] [--write-doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
CACHE = REPO_ROOT / ".cache" / "test-fixtures"


def _llama_bin() -> Path:
    """Where llama-perplexity was built beside llama-server: QUANTKIT_LLAMA_BIN, else the
    user's quantkit cache, read before QUANTKIT_CACHE is pointed at the test cache."""
    from quantkit.runtime.llama_server import build_folder

    return Path(os.environ.get("QUANTKIT_LLAMA_BIN") or build_folder() / "bin")


LLAMA_BIN = _llama_bin()
os.environ.setdefault("QUANTKIT_CACHE", str(CACHE / "quantkit-cache"))
# As the tests do: llama.cpp's OpenMP threads spin while they wait, which on shared cores
# slows both tools. Set before llama_cpp loads; llama-perplexity inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SECTION = "bench_eval"
N_CTX = 512
N_BATCH = 2048  # llama-perplexity's batch: 4 sequences of 512
TOOLS = ("llama-perplexity", "llama-perplexity -fa off", "quantkit")


def demo_files(work: Path) -> tuple[Path, Path]:
    """The demo model's HF folder and its Q8_0 GGUF (made here once)."""
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.demo.build import ensure_demo_model
    from quantkit.source.model import load_source

    source = ensure_demo_model(CACHE / "demo")
    gguf = work / "demo-Q8_0.gguf"
    if not gguf.is_file():
        export_gguf(load_source(source), gguf, out_type="Q8_0")
    return source, gguf


def plain_text(repeat: int) -> str:
    """The shipped eval corpus as plain text, without control-token strings."""
    from quantkit.evaluation.corpus import load_corpus

    parts = []
    for doc in load_corpus(None).documents:
        if doc.kind == "text":
            parts.append(doc.text.strip("\n"))
            continue
        for message in doc.messages:
            line = f"{message['role']}: {message.get('content') or ''}"
            if message.get("tool_calls"):
                line += " " + json.dumps(message["tool_calls"])
            parts.append(line)
    return "\n\n".join(parts * repeat) + "\n"


def check_same_tokens(gguf: Path, text_file: Path) -> int:
    """Tokenized as llama-perplexity does (no special-token parsing, BOS where the model
    adds one) and as quantkit does; returns the ids."""
    from llama_cpp import Llama

    from quantkit.evaluation.corpus import build_stream, load_corpus
    from quantkit.evaluation.engines import LlamaCppEngine

    text = text_file.read_bytes()
    engine = LlamaCppEngine(gguf, n_ctx=N_CTX)
    ours = build_stream(load_corpus(text_file), engine).ids
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    theirs = vocab.tokenize(text, add_bos=engine.add_bos, special=False)
    vocab.close()
    if list(ours) != theirs:
        raise SystemExit(f"{text_file} tokenizes differently for the two tools.")
    return theirs


PRECISION_CHUNKS = 8
# (label, flash attention, KV cache in float32); the first is the reference.
KERNELS = (("float32 (F32 KV cache, no flash attention)", False, True),
           ("F16 KV cache, no flash attention", False, False),
           ("flash attention (llama-perplexity, quantkit)", True, False))  # fmt: skip


def attention_precision(
    gguf: Path, ids: list[int], threads: int
) -> list[tuple[str, float, float, float]]:
    """(kernel, mean KLD, max KLD from the float32 computation, largest logit difference
    between the first chunk decoded with three others and alone), per KERNELS row."""
    import llama_cpp
    import numpy as np

    from quantkit.runtime.llama_cpp import silence_llama_cpp

    silence_llama_cpp()
    chunks = [ids[k * N_CTX : (k + 1) * N_CTX] for k in range(PRECISION_CHUNKS)]
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    scored = N_CTX - N_CTX // 2
    try:
        batched = [_kernel_logits(model, chunks, threads, fa, f32, 4) for _, fa, f32 in KERNELS]
        alone = [_kernel_logits(model, chunks[:1], threads, fa, f32, 1) for _, fa, f32 in KERNELS]
    finally:
        llama_cpp.llama_model_free(model)
    logs = [_log_softmax(logits) for logits in batched]
    reference = np.exp(logs[0])
    rows = []
    for k, (label, _, _) in enumerate(KERNELS):
        kld = (reference * (logs[0] - logs[k])).sum(axis=1)
        apart = float(np.abs(batched[k][:scored] - alone[k]).max())
        rows.append((label, float(kld.mean()), float(kld.max()), apart))
    return rows


def _kernel_logits(
    model, chunks: list[list[int]], threads: int, fa: bool, kv_f32: bool, n_seq: int
):
    """The scored half of every chunk's logits (float64), n_seq chunks per llama_decode."""
    import llama_cpp
    import numpy as np

    first = N_CTX // 2
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = n_seq * N_CTX
    params.n_ubatch, params.n_seq_max = N_CTX, n_seq
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)  # fmt: skip
    if kv_f32:
        params.type_k = params.type_v = 0  # GGML_TYPE_F32
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(n_seq * N_CTX, 0, 1)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    out = []
    try:
        for start in range(0, len(chunks), n_seq):
            batch.n_tokens = 0
            for seq, chunk in enumerate(chunks[start : start + n_seq]):
                for pos, token in enumerate(chunk):
                    k = batch.n_tokens
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
                    batch.seq_id[k][0], batch.logits[k] = seq, pos >= first
                    batch.n_tokens += 1
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama.cpp failed to decode a precision batch")
            rows = (batch.n_tokens // N_CTX) * (N_CTX - first)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx),
                                           shape=(rows, n_vocab))  # fmt: skip
            out.append(logits.astype(np.float64))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return np.concatenate(out)


def _log_softmax(x):
    import numpy as np

    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def run_llama_perplexity(binary: Path, gguf: Path, text_file: Path, threads: int, fa: str) -> dict:
    command = [str(binary), "-m", str(gguf), "-f", str(text_file), "-c", str(N_CTX),
               "-b", str(N_BATCH), "-t", str(threads), "-fa", fa]  # fmt: skip
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - tick
    log = done.stdout + done.stderr
    # Timestamps open llama.cpp's log lines, but a line may follow unended output ("ETA").
    stamp = r"(\d+\.\d{2}\.\d{3}\.\d{3}) I "
    start = re.search(stamp + r"perplexity: calculating perplexity over (\d+) chunks", log)
    final = re.search(stamp + r"Final estimate: PPL = ([\d.]+)", log)
    if not (start and final):
        raise SystemExit(f"llama-perplexity's output was not understood:\n{log[-2000:]}")
    chunks = int(start.group(2))
    seconds = _stamp(final.group(1)) - _stamp(start.group(1))
    return {"tokens_per_s": chunks * N_CTX / seconds, "wall": wall,
            "ppl": float(final.group(2)), "chunks": chunks}  # fmt: skip


def _stamp(text: str) -> float:
    """llama.cpp's log timestamp, minutes.seconds.milliseconds.microseconds, in seconds."""
    minutes, seconds, millis, micros = (int(x) for x in text.split("."))
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def run_quantkit(gguf: Path, source: Path, text_file: Path) -> dict:
    from quantkit.evaluation.measure import evaluate_artifact

    tick = time.perf_counter()
    report = evaluate_artifact(gguf, source, corpus=text_file, n_ctx=N_CTX)
    wall = time.perf_counter() - tick
    if not report.reference_cached:
        raise SystemExit("the reference was not cached: the timed run computed it")
    return {"tokens_per_s": report.tokens_per_second, "wall": wall,
            "ppl": report.perplexity, "chunks": report.chunks}  # fmt: skip


def bench(args: argparse.Namespace, gguf: Path, source: Path, text_file: Path) -> dict:
    """Every tool --repeat times, in a rotating order; all results per tool."""
    from quantkit.evaluation.measure import evaluate_artifact

    evaluate_artifact(gguf, source, corpus=text_file, n_ctx=N_CTX)  # caches the reference
    runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    for round_ in range(args.repeat):
        order = TOOLS[round_ % len(TOOLS) :] + TOOLS[: round_ % len(TOOLS)]
        for tool in order:
            if tool == "quantkit":
                result = run_quantkit(gguf, source, text_file)
            else:
                fa = "off" if tool.endswith("-fa off") else "auto"
                result = run_llama_perplexity(args.llama_perplexity, gguf, text_file,
                                              args.threads, fa)  # fmt: skip
            result["load"] = os.getloadavg()[0]
            runs[tool].append(result)
            print(f"round {round_ + 1} {tool}: {result['tokens_per_s']:.0f} tokens/s, "
                  f"{result['wall']:.1f} s end to end, PPL {result['ppl']:.4f}, "
                  f"load {result['load']:.1f}", flush=True)  # fmt: skip
    return runs


def markdown(
    runs: dict, chunks: int, command: str, gguf: Path, threads: int, precision: list
) -> str:
    from bench_convert import machine

    base = {tool: [r["tokens_per_s"] for r in runs[tool]] for tool in TOOLS}
    ratios = {
        tool: [ours / theirs for ours, theirs in zip(base["quantkit"], base[tool], strict=True)]
        for tool in TOOLS
    }
    rows = []
    for tool in TOOLS:
        tps = base[tool]
        rows.append(
            f"| {tool} | {statistics.median(tps):.0f} ({min(tps):.0f}-{max(tps):.0f}) | "
            f"{statistics.median(ratios[tool]):.2f}x | "
            f"{statistics.median(r['wall'] for r in runs[tool]):.1f} | "
            f"{runs[tool][0]['ppl']:.4f} |"
        )
    loads = [r["load"] for tool in TOOLS for r in runs[tool]]
    per_round = [
        f"quantkit / {tool} per round: {', '.join(f'{x:.2f}' for x in ratios[tool])}."
        for tool in TOOLS[:2]
    ]
    return "\n".join([
        "## Evaluation throughput vs llama-perplexity (scripts/bench_eval.py)",
        "",
        f"What: {gguf.name} scored on the same text (the shipped eval corpus as plain text, "
        f"repeated; {chunks} chunks of {N_CTX} tokens, the same ids for both tools, checked) "
        f"by llama.cpp's `llama-perplexity -c {N_CTX} -b {N_BATCH} -t {threads}` (built from "
        "the llama-cpp-python 0.3.36 sdist for this CPU, GGML_NATIVE=ON, like the wheel; flash "
        "attention `auto`, which is on for the CPU, and `-fa off`) and by quantkit's "
        "(flash attention on) "
        "`evaluate_artifact` against the demo's HF folder, with the source's reference "
        "logits cached before the timed runs. tokens/s: all evaluated tokens over the time "
        "spent evaluating them (quantkit: its forward passes; llama-perplexity: from its "
        "\"calculating perplexity\" line to its final estimate). Median of "
        f"{len(base['quantkit'])} rounds, range in brackets; the tools alternate in a "
        "rotating order. \"quantkit / tool\": median over rounds of quantkit's tokens/s "
        "divided by the tool's in the same round. End to end: the whole `evaluate_artifact` "
        "call (tokenizing both sides, the cached reference, loading, scoring) or the whole "
        "llama-perplexity process.",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine()}; load average {min(loads):.1f}-{max(loads):.1f} during the "
        "runs (the machine is shared: compare the ratios, not the absolute figures).",
        "",
        "| tool | tokens/s | quantkit / tool | end to end (s) | perplexity |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *per_round,
        "",
        f"Precision (llama.cpp, the first {PRECISION_CHUNKS} chunks, the scored half of each): "
        "KL divergence from the float32 computation's logits, and the largest difference "
        "between a chunk's logits decoded with three others and alone.",
        "",
        "| kernel | mean KLD | max KLD | max logit difference, batched vs alone |",
        "|---|---|---|---|",
        *(f"| {label} | {mean:.3e} | {most:.3e} | {apart:.3g} |"
          for label, mean, most, apart in precision),  # fmt: skip
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from bench_convert import write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the demo's Q8_0")
    parser.add_argument("--source", type=Path, default=None, help="the GGUF's HF source")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--repeat-text", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--llama-perplexity", type=Path, default=LLAMA_BIN / "llama-perplexity")
    parser.add_argument("--work", type=Path, default=CACHE / "bench-eval")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.llama_perplexity.is_file():
        raise SystemExit(
            f"{args.llama_perplexity} is missing: build it with llama-server "
            "(docs/troubleshooting.md) or name it with --llama-perplexity."
        )
    if (args.gguf is None) != (args.source is None):
        raise SystemExit("--gguf and --source go together (the GGUF and its HF source).")
    args.work.mkdir(parents=True, exist_ok=True)
    source, gguf = demo_files(args.work) if args.gguf is None else (args.source, args.gguf)
    text_file = args.work / "eval-text.txt"
    text_file.write_text(plain_text(args.repeat_text), encoding="utf-8")
    ids = check_same_tokens(gguf, text_file)
    chunks = len(ids) // N_CTX
    precision = attention_precision(gguf, ids, args.threads)
    runs = bench(args, gguf, source, text_file)
    counts = {r["chunks"] for tool in TOOLS for r in runs[tool]}
    if counts != {chunks}:
        raise SystemExit(f"the tools scored different chunk counts: {counts}, expected {chunks}")
    command = "python scripts/bench_eval.py " + " ".join(argv or sys.argv[1:])
    body = markdown(runs, chunks, command, gguf, args.threads, precision)
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
