#!/usr/bin/env python3
"""quantkit convert at real Llama geometries: wall time per stage, peak anonymous memory and
disk used, for the three paths people take (issue #13).

The models: random BF16 weights at real Llama-3.2/3.1 geometries (1b: 1.24B parameters,
tied head, 2.5 GB; 3b: 3.21B, tied, 6.4 GB; 8b: 8.03B, 16 GB) with the real Llama 3.1
tokenizer, streamed to disk by bench_convert's builder in the Hub's usual 5 GB shards
(--shard-gb). Random weights make the quality
figures meaningless, so every run passes --no-gate; the work (importance matrix,
quantization, checks, evaluation) is what a trained model gets.

Per shape and path, one fresh child process runs `quantkit.convert` (the CLI's library
call) with a progress callback that records when each stage starts and ends:

  gguf  --profile rtx4090-4bit                 Q4_K_M with an importance matrix
  gguf-plain  the same with --no-repack        llama.cpp's weights not repacked
  fp8   --profile a100-fp8                     FP8_DYNAMIC, tensor by tensor
  bf16  --format safetensors --quant BF16

Before it, the parent asks `convert --dry-run` for its estimate (planning.cost, with the
reference machine's rates), printed beside the measurement with the relative error.
Measured around the child: wall time; peak RssAnon of the whole process tree, sampled every
0.5 s (llama.cpp's and safetensors' memory-mapped file pages are not anonymous and do not
count); peak disk used, as the growth of the output file system's used bytes (nothing else
should write to it meanwhile); the artifact's bytes. Each run has a QUANTKIT_CACHE of its
own, so the source's reference logits are computed every time.

    .venv/bin/python scripts/bench_scale.py [--shapes 1b,3b,8b] [--paths gguf,fp8,bf16]
        [--shard-gb 5] [--keep-model] [--write-doc docs/benchmarks.md]

The models and outputs are deleted at the end unless --keep-model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_auto_cost import SHAPES as AUTO_SHAPES  # noqa: E402
from bench_auto_cost import fresh_env, tree_rss_anon  # noqa: E402
from bench_convert import build_synthetic, machine, write_section  # noqa: E402

SECTION = "bench_scale"
SHAPES = {
    **AUTO_SHAPES,
    "3b": {"hidden": 3072, "intermediate": 8192, "layers": 28, "heads": 24, "kv_heads": 8,
           "head_dim": 128, "vocab": 128256, "tied": 1},
}  # fmt: skip
PATHS = {
    "gguf": {"profile": "rtx4090-4bit"},
    # the same with llama.cpp's weight repacking off (`--no-repack`): no repacked copy
    "gguf-plain": {"profile": "rtx4090-4bit", "gguf": {"repack": False}},
    "fp8": {"profile": "a100-fp8"},
    "bf16": {"format": "safetensors", "quant": "BF16"},
}
# The child: quantkit.convert with a progress callback noting each stage's first and last
# tick (wall-clock time, as the parent's memory samples); prints one JSON line.
CHILD = """
import json, sys, time
from quantkit import GGUFOptions, convert
from quantkit.evaluation.options import EvalOptions
stages = {}
def progress(stage, done, total):
    now = time.time()
    stages.setdefault(stage, [now, now])[1] = now
kwargs = json.loads(sys.argv[3])
if "gguf" in kwargs:
    kwargs["gguf"] = GGUFOptions(**kwargs["gguf"])
result = convert(sys.argv[1], out=sys.argv[2], evaluation=EvalOptions(gate=False),
                 progress=progress, **kwargs)
print(json.dumps({"stages": stages, "artifact_bytes": sum(f["bytes"] for f in result.files)}))
"""


@dataclass
class Run:
    shape: str
    path: str
    seconds: float = 0.0
    peak_anon: int = 0
    peak_disk: int = 0
    artifact_bytes: int = 0
    estimate: dict = field(default_factory=dict)  # convert --dry-run's cost, before the run
    start: float = 0.0  # wall-clock time the child was started
    stages: dict[str, list[float]] = field(default_factory=dict)  # name -> [first, last]
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, tree RssAnon)

    def peak_between(self, first: float, last: float) -> int:
        """The highest sample from `first` to `last` (wall-clock), or 0 if none fell in."""
        return max((anon for t, anon in self.samples if first <= t <= last), default=0)


def disk_used(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.total - usage.free


def estimate(model: Path, path: str, work: Path) -> dict:
    """What `convert --dry-run` predicts for the run, with the reference machine's rates
    (the child's QUANTKIT_CACHE is fresh, so it has measured none)."""
    import quantkit
    from quantkit.evaluation.options import EvalOptions

    saved = os.environ.get("QUANTKIT_CACHE")
    os.environ["QUANTKIT_CACHE"] = str(work / "estimate-cache")  # empty: no measured rates
    try:
        kwargs = dict(PATHS[path])
        if "gguf" in kwargs:
            kwargs["gguf"] = quantkit.GGUFOptions(**kwargs["gguf"])
        result = quantkit.convert(model, out=work / "estimate", dry_run=True,
                                  evaluation=EvalOptions(gate=False), **kwargs)  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop("QUANTKIT_CACHE")
        else:
            os.environ["QUANTKIT_CACHE"] = saved
    assert result.cost is not None
    return result.cost.to_dict()


def measure(shape: str, path: str, model: Path, work: Path) -> Run:
    """One convert in a child process, its tree's RssAnon and the disk's growth sampled."""
    import subprocess

    run = Run(shape, path, estimate=estimate(model, path, work))
    out = work / f"{shape}-{path}"
    env = fresh_env(work / f"cache-{shape}-{path}")
    cmd = [sys.executable, "-c", CHILD, str(model), str(out), json.dumps(PATHS[path])]
    os.sync()
    base = disk_used(work)
    start = time.perf_counter()
    run.start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            anon = tree_rss_anon(proc.pid)
            run.samples.append((time.time(), anon))
            run.peak_anon = max(run.peak_anon, anon)
            run.peak_disk = max(run.peak_disk, disk_used(work) - base)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    run.seconds = time.perf_counter() - start
    if proc.returncode != 0:
        log = Path(tempfile.gettempdir()) / f"bench_scale-{shape}-{path}.stderr"
        log.write_bytes(stderr)
        raise RuntimeError(f"{shape} {path} failed ({proc.returncode}); stderr in {log}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    run.stages, run.artifact_bytes = result["stages"], result["artifact_bytes"]
    shutil.rmtree(out, ignore_errors=True)
    return run


def stage_summary(run: Run) -> str:
    """Each stage's seconds (first to last tick) and peak RssAnon, and the gaps between
    stages, where the work that reports no progress runs (source checks before the build,
    the survival checks and the evaluation after it, the card at the end)."""
    parts, last_end = [], run.start
    end = run.start + run.seconds

    def part(name: str, first: float, last: float) -> str:
        return f"{name} {last - first:.0f} s / {run.peak_between(first, last) / 1e9:.2f} GB"

    for name, (first, last) in sorted(run.stages.items(), key=lambda kv: kv[1][0]):
        if first - last_end >= 1:
            parts.append(part("(other)", last_end, first))
        parts.append(part(name, first, last))
        last_end = last
    if end - last_end >= 1:
        parts.append(part("(other)", last_end, end))
    return ", ".join(parts)


def markdown(runs: list[Run], command: str, load_before: str) -> str:
    gb = 1e9
    lines = [
        f"Command: `{command}`; random weights, so `--no-gate`. Each run a fresh process with",
        "its own QUANTKIT_CACHE (the reference logits computed every time).",
        "",
        f"Machine: {machine()}; load average (1, 5, 15 min) before: {load_before}, after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "| shape | path | wall s | peak RssAnon GB | peak disk GB | artifact GB | "
        "dry run: s | dry run: peak GB | dry run: disk GB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        e = r.estimate
        lines.append(
            f"| {r.shape} | {r.path} | {r.seconds:.0f} | {r.peak_anon / gb:.2f} | "
            f"{r.peak_disk / gb:.2f} | {r.artifact_bytes / gb:.2f} | "
            f"{e['seconds']} ({e['seconds'] / r.seconds - 1:+.0%}) | "
            f"{e['peak_ram_bytes'] / gb:.2f} ({e['peak_ram_bytes'] / r.peak_anon - 1:+.0%}) | "
            f"{e['disk_peak_bytes'] / gb:.2f} |"
        )
    lines += ["", 'Stages (seconds / peak RssAnon in the stage; "(other)": checks, evaluation and '
              "steps that report no progress):", ""]
    lines += [f"- {r.shape} {r.path}: {stage_summary(r)}" for r in runs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fixtures.models import ensure_llama31_tokenizer
    from fixtures.reference_converter import default_cache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b,3b,8b")
    parser.add_argument("--paths", default="gguf,fp8,bf16")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--shard-gb", type=float, default=5.0,
                        help="source shard size (the Hub's usual 5 GB by default)")
    parser.add_argument("--keep-model", action="store_true")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    shapes, paths = args.shapes.split(","), args.paths.split(",")
    unknown = [s for s in shapes if s not in SHAPES] + [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown shape or path: {', '.join(unknown)}")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: list[Run] = []
    for shape in shapes:
        root = args.cache / f"bench-scale-{shape}-{args.shard_gb:g}gb"
        model, work = root / "model", root / "work"
        if not (model / "config.json").is_file():
            shutil.rmtree(model, ignore_errors=True)
            model.mkdir(parents=True)
            build_synthetic(model, ensure_llama31_tokenizer(args.cache), SHAPES[shape],
                            shard_bytes=int(args.shard_gb * 1e9))  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        try:
            for path in paths:
                runs.append(measure(shape, path, model, work))
                print(markdown(runs[-1:], "", load_before), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not args.keep_model:
                shutil.rmtree(root, ignore_errors=True)
    command = "python scripts/bench_scale.py " + " ".join(argv or sys.argv[1:])
    body = markdown(runs, command.strip(), load_before)
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body, f"{SECTION} {args.shapes}")  # one per shape set
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
