#!/usr/bin/env python3
"""What `--quant auto` costs against a plain Q4_K_M convert, at a real Llama geometry.

The model: random BF16 weights at a real Llama-3.1/3.2 geometry (8b: 8.03B parameters,
16 GB; 1b: 1.24B, tied head, 2.5 GB) with the real Llama 3.1 tokenizer, streamed to disk
by bench_convert's builder. Random weights make the quality figures meaningless, so both
runs pass --no-gate; the work done (importance matrix, quantization, probes, evaluation)
is the same as on trained weights.

In one run, each a fresh child process, one after the other:

  plain  quantkit convert MODEL --profile rtx4090-4bit --no-gate          (Q4_K_M, imatrix)
  auto   quantkit convert MODEL --profile rtx4090-4bit --quant auto --max-size <plain's
         file size> --no-gate

Each run has a QUANTKIT_CACHE of its own (no reference logits carried over). Per run: wall
time, peak anonymous memory of the whole process tree (RssAnon of every
descendant, summed, sampled every 0.5 s; llama.cpp's mmapped file pages do not count) and
the artifact's size; for auto also its own stages from the recipe (method.seconds). The
target (issue #14): auto at most about twice the plain convert's wall time.

    .venv/bin/python scripts/bench_auto_cost.py [--shape 8b] [--keep-model]
        [--write-doc docs/benchmarks.md]

The model (16 GB at 8b) and the outputs are deleted at the end unless --keep-model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repo's fixtures/ package
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from bench_convert import build_synthetic, machine, write_section  # noqa: E402

SECTION = "bench_auto_cost"
SHAPES = {
    "8b": {"hidden": 4096, "intermediate": 14336, "layers": 32, "heads": 32, "kv_heads": 8,
           "head_dim": 128, "vocab": 128256},
    "1b": {"hidden": 2048, "intermediate": 8192, "layers": 16, "heads": 32, "kv_heads": 8,
           "head_dim": 64, "vocab": 128256, "tied": 1},
}  # fmt: skip
PROFILE = "rtx4090-4bit"


@dataclass
class Run:
    label: str
    seconds: float = 0.0
    peak_anon_bytes: int = 0
    artifact_bytes: int = 0
    stages: dict[str, float] = field(default_factory=dict)


# --- memory of a process tree -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_anon(root: int) -> int:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_anon(pid)
        todo += _children(pid)
    return total


def fresh_env(cache: Path) -> dict[str, str]:
    """A QUANTKIT_CACHE of its own for each run, so neither finds the other's reference
    logits; the llama-server quantkit built stays the one the round-trip check runs."""
    from quantkit.runtime.llama_server import find_llama_server

    env = dict(os.environ, QUANTKIT_CACHE=str(cache))
    server = find_llama_server()
    if server is not None:
        env["QUANTKIT_LLAMA_SERVER"] = str(server.path)
    return env


def run_sampled(cmd: list[str], env: dict[str, str] | None = None):
    """Run `cmd`, sampling its process tree's RssAnon every 0.5 s: (returncode, stdout,
    stderr, wall seconds, peak RssAnon bytes)."""
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_anon(proc.pid))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    return proc.returncode, out, err, time.perf_counter() - start, peak


def measure(label: str, cmd: list[str], env: dict[str, str]) -> tuple[Run, dict]:
    """Run `cmd` (a `quantkit convert --json`), sampling its tree's RssAnon; its JSON result."""
    os.sync()
    run = Run(label)
    returncode, out, err, run.seconds, run.peak_anon_bytes = run_sampled(cmd, env)
    if returncode != 0:
        log = Path(tempfile.gettempdir()) / f"bench_auto_cost-{label.replace(' ', '_')}.stderr"
        log.write_bytes(err)
        tail = err.decode(errors="replace").strip().splitlines()[-20:]
        raise RuntimeError(f"{label} failed ({returncode}), stderr in {log}:\n"
                           + "\n".join(tail))  # fmt: skip
    return run, json.loads(out)


# --- the two runs -------------------------------------------------------------------------------


def convert_cmd(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "quantkit", "convert", str(model), "--profile", PROFILE,
            "--no-gate", "--json", "-o", str(out), *extra]  # fmt: skip


def artifact_file(result: dict) -> Path:
    name = next(f["name"] for f in result["files"] if f["role"] == "artifact")
    return Path(result["out"]) / name


def bench(model: Path, work: Path) -> list[Run]:
    plain, result = measure("plain Q4_K_M", convert_cmd(model, work / "plain"),
                            fresh_env(work / "cache-plain"))  # fmt: skip
    artifact = artifact_file(result)
    plain.artifact_bytes = artifact.stat().st_size
    budget = str(plain.artifact_bytes)
    shutil.rmtree(work / "plain")
    auto, result = measure("auto", convert_cmd(model, work / "auto", "--quant", "auto",
                                               "--max-size", budget),
                           fresh_env(work / "cache-auto"))  # fmt: skip
    artifact = artifact_file(result)
    auto.artifact_bytes = artifact.stat().st_size
    recipe = json.loads((artifact.parent / result["recipe"]["file"]).read_text())
    auto.stages = recipe.get("method", {}).get("seconds", {})
    shutil.rmtree(work / "auto")
    return [plain, auto]


def markdown(runs: list[Run], shape: str, command: str, load_before: str) -> str:
    plain, auto = runs
    gb = 1e9
    lines = [
        f"Command: `{command}` (shape {shape}: {json.dumps(SHAPES[shape])}; random weights,",
        "so `--no-gate`). One run, plain first, each a fresh process.",
        "",
        f"Machine: {machine()}; load average (1, 5, 15 min) before the runs: {load_before}, "
        f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "| run | wall s | x plain | peak RssAnon GB | artifact GB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r.label} | {r.seconds:.0f} | {r.seconds / plain.seconds:.2f} | "
                     f"{r.peak_anon_bytes / gb:.2f} | {r.artifact_bytes / gb:.3f} |")  # fmt: skip
    if auto.stages:
        lines += ["", "auto's own stages (seconds, from the recipe's `method.seconds`): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in auto.stages.items()) + "."]  # fmt: skip
    verdict = "meets" if auto.seconds <= 2 * plain.seconds else "misses"
    lines += ["", f"Target (auto at most ~2x the plain convert): {verdict} "
              f"({auto.seconds / plain.seconds:.2f}x)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fixtures.models import ensure_llama31_tokenizer
    from fixtures.reference_converter import default_cache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--keep-model", action="store_true")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)

    root = args.cache / f"bench-auto-cost-{args.shape}"
    model, work = root / "model", root / "work"
    if not (model / "config.json").is_file():
        shutil.rmtree(model, ignore_errors=True)
        model.mkdir(parents=True)
        build_synthetic(model, ensure_llama31_tokenizer(args.cache), SHAPES[args.shape])
    work.mkdir(parents=True, exist_ok=True)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        runs = bench(model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_model:
            shutil.rmtree(root, ignore_errors=True)
    command = "python scripts/bench_auto_cost.py " + " ".join(argv or sys.argv[1:])
    body = markdown(runs, args.shape, command.strip(), load_before)
    print(body)
    if args.write_doc:
        write_section(args.write_doc, body, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
