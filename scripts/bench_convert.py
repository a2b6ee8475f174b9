#!/usr/bin/env python3
"""Benchmark our HF -> BF16 GGUF conversion against llama.cpp's convert_hf_to_gguf.py.

Each conversion runs in a fresh child process; its wall time is measured around the child
and its peak RSS comes from os.wait4's rusage for that child alone. Both converters read
the same source (warmed into the page cache first, so neither pays the first read) and
write to the same disk. Models:

  llama31    the test fixture (Llama-3.1-shaped, ~280 MB, needs npm for the tokenizer)
  synthetic  a Llama-3.1-shaped model of several GB (hidden 2048, 20 layers, vocab 128256,
             untied; ~3.5 GB BF16), random weights streamed into safetensors shards
             without holding more than one block in memory

Targets (from the issue): our time <= 1.0x the reference's, our peak RSS <= 0.5x the
reference's and < ~1.5 GB on the multi-GB model.

    .venv/bin/python scripts/bench_convert.py [--models llama31,synthetic] [--repeat N]
        [--with-cli] [--write-doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repo's fixtures/ package
sys.path.insert(0, str(REPO_ROOT / "scripts"))

SECTION = "bench_convert"
SYNTHETIC = {"hidden": 2048, "intermediate": 8192, "layers": 20, "heads": 32, "kv_heads": 8,
             "head_dim": 64, "vocab": 128256}  # fmt: skip
SHARD_BYTES = 1_000_000_000  # ~1 GB shards, like HF's default 5 GB but smaller files
CHUNK_ELEMENTS = 16 * 1024 * 1024  # random numbers generated per step (64 MB of float32)

OURS_API = (
    "import sys; from pathlib import Path; "
    "from quantkit.source.model import load_source; "
    "from quantkit.backends.gguf.export import export_gguf; "
    "export_gguf(load_source(sys.argv[1]), Path(sys.argv[2]), out_type='BF16')"
)


@dataclass(frozen=True)
class Run:
    tool: str
    seconds: float
    peak_rss_bytes: int
    out_bytes: int


# --- the synthetic multi-GB model ---------------------------------------------------------


def synthetic_tensors(s: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes of a LlamaForCausalLM with geometry `s`, in HF order."""
    h, i, q, kv = s["hidden"], s["intermediate"], s["heads"] * s["head_dim"], s["kv_heads"]
    kvd = kv * s["head_dim"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (s["vocab"], h))]
    for n in range(s["layers"]):
        p = f"model.layers.{n}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (q, h)),
            (f"{p}.self_attn.k_proj.weight", (kvd, h)),
            (f"{p}.self_attn.v_proj.weight", (kvd, h)),
            (f"{p}.self_attn.o_proj.weight", (h, q)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not s.get("tied"):
        out.append(("lm_head.weight", (s["vocab"], h)))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shards(
    tensors: list[tuple[str, tuple[int, ...]]], shard_bytes: int = SHARD_BYTES
) -> list[list[tuple[str, tuple]]]:
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def write_bf16_shard(path: Path, tensors: list[tuple[str, tuple]], rng) -> dict[str, str]:
    """Write one safetensors file tensor by tensor (the format is a JSON header + raw
    data), generating random BF16 values a chunk at a time so memory stays flat."""
    import numpy as np

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = 2 * _numel(shape)
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data must start 8-byte aligned
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _name, shape in tensors:
            numel = _numel(shape)
            is_norm = len(shape) == 1
            for start in range(0, numel, CHUNK_ELEMENTS):
                n = min(CHUNK_ELEMENTS, numel - start)
                values = rng.standard_normal(n, dtype=np.float32)
                values = 1.0 + 0.1 * values if is_norm else 0.02 * values
                # float32 -> bfloat16 by truncation: the top 16 bits.
                fh.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    return {name: path.name for name, _ in tensors}


def build_synthetic(dest: Path, tokenizer_dir: Path, s: dict[str, int] = SYNTHETIC, *,
                    shard_bytes: int = SHARD_BYTES) -> None:  # fmt: skip
    """A LlamaForCausalLM of geometry `s` (SYNTHETIC's keys, and "tied" for a head tied to
    the embeddings) with random BF16 weights, in shards of `shard_bytes`, and the real
    Llama 3.1 tokenizer."""
    import numpy as np

    from fixtures.models import LLAMA31_EOS_IDS, LLAMA31_ROPE, LLAMA31_ROPE_THETA

    rng = np.random.default_rng(3)
    shards = plan_shards(synthetic_tensors(s), shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update(write_bf16_shard(dest / name, tensors, rng))
        total += sum(2 * _numel(shape) for _, shape in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
        "vocab_size": s["vocab"], "hidden_size": s["hidden"],
        "intermediate_size": s["intermediate"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "head_dim": s["head_dim"], "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": bool(s.get("tied")), "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": LLAMA31_EOS_IDS,
        "rope_parameters": {**LLAMA31_ROPE, "rope_theta": LLAMA31_ROPE_THETA},
    }  # fmt: skip
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"bos_token_id": 128000, "eos_token_id": LLAMA31_EOS_IDS}
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2))
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, dest / f.name)


# --- measuring ----------------------------------------------------------------------------


def measure(tool: str, cmd: list[str], out_file: Path, env: dict[str, str] | None) -> Run:
    """Run `cmd` as a fresh child; wall time and that child's own peak RSS (wait4).

    Neither converter fsyncs its output, so the time ends when the child exits with its
    data in the page cache. os.sync() first, so one run's writeback does not slow the next.
    """
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # drain, or a chatty child blocks on a full pipe
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-20:]
        raise RuntimeError(f"{tool} failed ({proc.returncode}):\n" + "\n".join(tail))
    size = sum(p.stat().st_size for p in _outputs(out_file))
    return Run(tool, seconds, usage.ru_maxrss * 1024, size)  # ru_maxrss is in KiB on Linux


def _outputs(out: Path) -> list[Path]:
    return [out] if out.is_file() else sorted(out.rglob("*.gguf"))


def warm_page_cache(model: Path) -> None:
    for shard in sorted(model.glob("*.safetensors")):
        with shard.open("rb") as fh:
            while fh.read(64 * 1024 * 1024):
                pass


@dataclass(frozen=True)
class Job:
    tool: str
    cmd: list[str]
    out: Path  # a file, or a folder the tool writes into
    env: dict[str, str] | None = None


def jobs_for(model: Path, work: Path, ref, with_cli: bool) -> list[Job]:
    ours, theirs, cli_out = work / "ours.gguf", work / "reference.gguf", work / "cli-out"
    jobs = [
        Job(
            "quantkit (export_gguf)", [sys.executable, "-c", OURS_API, str(model), str(ours)], ours
        ),
        Job(
            "llama.cpp convert_hf_to_gguf.py", ref.command(model, theirs, "bf16"), theirs, ref.env()
        ),
    ]
    if with_cli:
        cli = ["-m", "quantkit", "convert", str(model), "--format", "gguf", "--quant", "BF16"]
        cli += ["--out", str(cli_out), "--no-verify", "--quiet"]
        jobs.append(Job("quantkit convert (CLI, --no-verify)", [sys.executable, *cli], cli_out))
    return jobs


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def bench_model(label: str, model: Path, work: Path, ref, repeat: int, with_cli: bool) -> list[Run]:
    warm_page_cache(model)
    runs: list[Run] = []
    for _ in range(repeat):
        # Alternate the tools so drift (thermal, background load) hits both alike.
        for job in jobs_for(model, work, ref, with_cli):
            _remove(job.out)
            run = measure(job.tool, job.cmd, job.out, job.env)
            rss = run.peak_rss_bytes / 2**20
            print(f"{label}: {job.tool}: {run.seconds:.1f} s, peak RSS {rss:,.0f} MiB", flush=True)
            runs.append(run)
            _remove(job.out)  # outputs of the multi-GB model would fill the disk
    return runs


# --- reporting ----------------------------------------------------------------------------


def summarize(runs: list[Run]) -> dict[str, Run]:
    """Per tool: median time, max peak RSS over the repeats."""
    out: dict[str, Run] = {}
    for tool in dict.fromkeys(r.tool for r in runs):
        mine = [r for r in runs if r.tool == tool]
        out[tool] = Run(tool, statistics.median(r.seconds for r in mine),
                        max(r.peak_rss_bytes for r in mine), mine[0].out_bytes)  # fmt: skip
    return out


def markdown(results: dict[str, tuple[Path, dict[str, Run]]], command: str, repeat: int) -> str:
    lines = [
        "## HF -> BF16 GGUF: quantkit vs llama.cpp's convert_hf_to_gguf.py",
        "",
        "What: wall time and peak RSS of one conversion, each in a fresh child process "
        "(peak RSS from `os.wait4` rusage of that child), source warmed into the page cache "
        f"first; median time and max RSS of {repeat} run(s), the tools interleaved, so compare "
        "ratios rather than absolute times across runs. Reference: convert_hf_to_gguf.py "
        "from the llama-cpp-python 0.3.36 sdist (scripts/fetch_reference_converter.py).",
        "Targets: time ratio <= 1.0, RSS ratio <= 0.5, our RSS < ~1.5 GB on the multi-GB model.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        "| model | source | tool | output | time (s) | peak RSS (MiB) | time ratio | RSS ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, (model, summary) in results.items():
        size = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9
        ref = next(r for t, r in summary.items() if t.startswith("llama.cpp"))
        for tool, run in summary.items():
            lines.append(
                f"| {label} | {size:.2f} GB | {tool} | {run.out_bytes / 1e9:.2f} GB | "
                f"{run.seconds:.1f} | "
                f"{run.peak_rss_bytes / 2**20:,.0f} | {run.seconds / ref.seconds:.2f}x | "
                f"{run.peak_rss_bytes / ref.peak_rss_bytes:.2f}x |"
            )
    lines += [
        "",
        "Ratios are quantkit / reference (lower is better for quantkit). The export_gguf row "
        "is the conversion alone, like the reference; the CLI row (`--with-cli`) adds what "
        "`quantkit convert` does around it (plan, artifact folder, manifest with hashes and "
        "the tensor-type census of the written file).",
        "",
    ]
    lines += [verdict(label, summary) for label, (_, summary) in results.items()]
    return "\n".join(lines)


def verdict(label: str, summary: dict[str, Run]) -> str:
    """One line per model: the issue's targets, met or not, for export_gguf."""
    ours = next(r for t, r in summary.items() if t.startswith("quantkit (export_gguf)"))
    ref = next(r for t, r in summary.items() if t.startswith("llama.cpp"))
    checks = [
        ("time <= 1.0x", ours.seconds <= ref.seconds),
        ("RSS <= 0.5x", ours.peak_rss_bytes <= 0.5 * ref.peak_rss_bytes),
    ]
    if label == "synthetic":
        checks.append(("RSS < 1.5 GB", ours.peak_rss_bytes < 1.5e9))
    marks = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
    return f"- {label}, export_gguf: {marks}."


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    from importlib.metadata import version

    libs = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "gguf"))
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM; Python "
            f"{platform.python_version()}, {libs}; quantkit commit {commit}; "
            f"{time.strftime('%Y-%m-%d')}")  # fmt: skip


def write_section(doc: Path, body: str, section: str = SECTION) -> None:
    """Replace one benchmark's section (between its markers) or append it; other
    benchmarks' sections are left alone."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    block = f"{begin}\n{body}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from fixtures.models import (
        ReferenceConverter,
        build_once,
        ensure_llama31_model,
        ensure_llama31_tokenizer,
        ensure_reference_converter,
    )
    from fixtures.reference_converter import default_cache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama31,synthetic")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--work", type=Path, default=None, help="where outputs go (deleted)")
    parser.add_argument("--with-cli", action="store_true", help="also time `quantkit convert`")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)

    ref: ReferenceConverter = ensure_reference_converter(args.cache)
    models = {
        "llama31": lambda: ensure_llama31_model(args.cache),
        "synthetic": lambda: build_once(
            args.cache / "bench-synthetic-llama31-3.5gb-v1",
            lambda d: build_synthetic(d, ensure_llama31_tokenizer(args.cache)),
        ),
    }
    work = args.work or args.cache / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[Path, dict[str, Run]]] = {}
    for label in args.models.split(","):
        model = models[label]()
        results[label] = (model, summarize(bench_model(label, model, work, ref, args.repeat,
                                                       args.with_cli)))  # fmt: skip
    command = "python scripts/bench_convert.py " + " ".join(argv or sys.argv[1:])
    body = markdown(results, command.strip(), args.repeat)
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
