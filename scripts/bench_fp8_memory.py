"""FP8_DYNAMIC's memory: llmcompressor's oneshot on the loaded model against model_free_ptq's
files made tensor by tensor (what `quantkit convert --format fp8 --quant FP8_DYNAMIC` now
does), at a real Llama geometry with random weights.

    python scripts/bench_fp8_memory.py --shape 1b [--write-docs]

Each path runs in a process of its own (`quantkit.backends.safetensors.compressed.
quantize_model`, the quantization alone: no checks, no evaluation), its process tree's
RssAnon sampled every 0.5 s. The two artifacts are compared tensor by tensor. The model
is built in a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_auto_cost import SHAPES, run_sampled  # noqa: E402
from bench_convert import build_synthetic, write_section  # noqa: E402

SECTION = "bench_fp8_memory"
CHILD = """
import sys
from pathlib import Path
from quantkit.source.model import load_source
from quantkit.backends.safetensors import compressed
model, out, path = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
source = load_source(model)
if path == "model_free_ptq":  # llmcompressor's own, on links to the weights, index, config
    from llmcompressor import model_free_ptq
    staging = out.with_name(out.name + "-source")
    staging.mkdir()
    for f in model.iterdir():
        if f.suffix == ".safetensors" or f.name.endswith("config.json") or "index" in f.name:
            (staging / f.name).symlink_to(f.resolve())
    config = compressed.build_recipe("FP8_DYNAMIC").resolve_quantization_config()
    model_free_ptq(str(staging), str(out), config=compressed.model_free_config(source, config))
else:
    compressed.quantize_model(source, "FP8_DYNAMIC", out, shard_by_shard=path == "tensors")
"""
PATHS = {
    "oneshot": "oneshot (model loaded)",
    "model_free_ptq": "llmcompressor model_free_ptq (shard by shard)",
    "tensors": "quantkit: tensor by tensor (model_free_ptq's files)",
}


def run(model: Path, out: Path, path: str) -> tuple[float, int]:
    out.mkdir()
    returncode, _, err, seconds, peak = run_sampled([sys.executable, "-c", CHILD, str(model),
                                                     str(out), path])  # fmt: skip
    if returncode != 0:
        raise RuntimeError(err.decode(errors="replace")[-3000:])
    return seconds, peak


def same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.safetensors"))
    return names == sorted(p.name for p in b.glob("*.safetensors")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)  # fmt: skip


def compare(a: Path, b: Path) -> tuple[bool, int, int]:
    """(every tensor has the same values, FP8 elements whose bits differ, of which zeros
    that differ only in sign)."""
    import torch
    from safetensors import safe_open

    def load(folder: Path) -> dict:
        out = {}
        for shard in sorted(folder.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118
                    out[name] = fh.get_tensor(name)
        return out

    left, right = load(a), load(b)
    same, bits, signed_zeros = left.keys() == right.keys(), 0, 0
    for name in left.keys() & right.keys():
        x, y = left[name], right[name]
        if x.dtype == torch.float8_e4m3fn:
            differ = x.view(torch.uint8) != y.view(torch.uint8)
            bits += int(differ.sum())
            signed_zeros += int((differ & (x.float() == 0) & (y.float() == 0)).sum())
            x, y = x.float(), y.float()
        same = same and torch.equal(x, y)
    return same, bits, signed_zeros


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--shard-gb", type=float, default=5.0,
                        help="source shard size (the Hub's usual 5 GB by default)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    from fixtures.models import ensure_llama31_tokenizer

    cache = Path(os.environ.get("QUANTKIT_TEST_CACHE", ROOT / ".cache" / "test-fixtures"))
    with tempfile.TemporaryDirectory(prefix="bench-fp8-", dir=ROOT / ".cache") as tmp:
        work = Path(tmp)
        model = work / "model"
        model.mkdir()
        build_synthetic(model, ensure_llama31_tokenizer(cache), SHAPES[args.shape],
                        shard_bytes=int(args.shard_gb * 1e9))  # fmt: skip
        size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        shards = len(list(model.glob("*.safetensors")))
        rows = {}
        for path, label in PATHS.items():
            rows[label] = run(model, work / path, path)
            print(label, rows[label], flush=True)
        same, bits, signed_zeros = compare(work / "tensors", work / "oneshot")
        identical = same_shards(work / "tensors", work / "model_free_ptq")
        shutil.rmtree(model)
    lines = [
        f"### FP8_DYNAMIC memory at the Llama {args.shape} shape",
        "",
        f"Command: `python scripts/bench_fp8_memory.py --shape {args.shape} "
        f"--shard-gb {args.shard_gb:g} --write-docs` "
        f"({platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}). Random "
        f"BF16 weights, {size / 1e9:.2f} GB in {shards} shard(s); the quantization alone, "
        "in a process of its own; peak RssAnon of its process tree.",
        "",
        "| path | wall s | peak RssAnon GB |",
        "|---|---:|---:|",
        *(f"| {k} | {s:.0f} | {p / 1e9:.2f} |" for k, (s, p) in rows.items()),
        "",
        f"quantkit's shards are {'byte-identical' if identical else 'NOT identical'} to "
        "model_free_ptq's. Against oneshot, the tensors hold "
        f"{'the same' if same else 'DIFFERENT'} values; {bits} FP8 elements differ in their "
        f"bits, {signed_zeros} of them zeros that differ only in sign (oneshot writes +0 where "
        "the source holds -0).",
    ]
    print("\n".join(lines))
    if args.write_docs:
        write_section(ROOT / "docs" / "benchmarks.md", "\n".join(lines), f"{SECTION} {args.shape}")
    return 0 if same and identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
