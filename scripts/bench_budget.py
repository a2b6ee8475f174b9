#!/usr/bin/env python3
"""--quant auto against llama.cpp's stock recipes at the same file size, on the demo model.

For each stock recipe: quantize the demo's BF16 GGUF with llama.cpp (the same importance
matrix for every file: `--imatrix auto`'s default, 8 calibration samples), then let
`--quant auto` choose a type per tensor for a budget of exactly that file's size, and
measure both against the source on the whole shipped eval corpus (n_ctx 512). Reported per
pair: the two sizes, mean KLD, KLD p99, top-1 agreement and perplexity of both, and the
paired per-chunk differences (auto - stock) of KLD and token NLL with their standard errors
(chunks are the independent unit). Every run also records the time of each stage.

auto may use every type of `AUTO_TYPES` and every type the stock file itself uses: it is never
denied a type the recipe it is compared with has. That matters on the demo model, whose
weights come from a Q4_1 file: llama.cpp's Q5_K_M falls back to Q5_1 on its rows of 576,
and Q5_1 (a superset of Q4_1's grid) reproduces those weights exactly; AUTO_TYPES leaves
Q4_1/Q5_1 out (docs/quantization.md).

The numbers go to a JSON file; `--plot` draws the size-vs-KLD curve of both from it (PNG),
and `--write-doc` puts the table into docs/benchmarks.md.

    .venv/bin/python scripts/bench_budget.py [--stocks Q3_K_M,Q4_K_M,Q5_K_M,IQ4_XS]
        [--curve Q3_K_S,Q3_K_L,Q4_K_S,Q5_K_S,Q6_K] [--probe-chunks N (convert's default)]
        [--json docs/bench_budget.json] [--plot docs/bench_budget.png]
        [--write-doc docs/benchmarks.md]
    .venv/bin/python scripts/bench_budget.py --plot-only --json docs/bench_budget.json
        --plot docs/bench_budget.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".cache" / "test-fixtures"
os.environ.setdefault("QUANTKIT_CACHE", str(CACHE / "quantkit-cache"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SECTION = "bench_budget"
HEADLINE = ("Q3_K_M", "Q4_K_M", "Q5_K_M", "IQ4_XS")


def main() -> None:
    args = _parse()
    path = Path(args.json)
    if not args.plot_only:
        results = run(args.stocks.split(","), _split(args.curve), args.probe_chunks)
        path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    results = json.loads(path.read_text(encoding="utf-8"))
    if args.plot:
        plot(results, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.write_doc:
        write_doc(results, Path(args.write_doc), args.plot)
    print(table(results))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", default=",".join(HEADLINE))
    parser.add_argument("--curve", default="Q3_K_S,Q3_K_L,Q4_K_S,Q5_K_S,Q6_K")
    from quantkit.backends.gguf.options import PROBE_CHUNKS

    parser.add_argument("--probe-chunks", type=int, default=PROBE_CHUNKS)
    parser.add_argument("--json", default=str(REPO_ROOT / "docs" / "bench_budget.json"))
    parser.add_argument("--plot", default=str(REPO_ROOT / "docs" / "bench_budget.png"))
    parser.add_argument("--write-doc", default=None)
    parser.add_argument("--plot-only", action="store_true")
    return parser.parse_args()


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def run(stocks: list[str], curve: list[str], probe_chunks: int) -> dict[str, Any]:
    from quantkit.backends.gguf.auto.sensitivity import relative_errors
    from quantkit.backends.gguf.auto.weights import BF16File
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.backends.gguf.imatrix.compute import compute_imatrix, prepare_imatrix_data
    from quantkit.demo.build import ensure_demo_model
    from quantkit.formats.gguf_types import AUTO_TYPES
    from quantkit.source.model import load_source

    source = load_source(ensure_demo_model(CACHE / "demo"))
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        work = Path(tmp)
        tick = time.perf_counter()
        bf16 = export_gguf(source, work / "demo-BF16.gguf").path
        timings["BF16 GGUF"] = time.perf_counter() - tick
        tick = time.perf_counter()
        data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=8,
                                    chunk_size=512, seed=0)  # fmt: skip
        imatrix = compute_imatrix(bf16, data)
        timings["importance matrix"] = time.perf_counter() - tick
        tick = time.perf_counter()
        errors = relative_errors(BF16File(bf16), imatrix, types=(*AUTO_TYPES, "Q4_1", "Q5_1"))
        timings["relative errors (every tensor, 15 types)"] = time.perf_counter() - tick
        pairs = [pair(source, bf16, imatrix, errors, stock, work, probe_chunks)
                 for stock in [*stocks, *curve]]  # fmt: skip
    return {
        "machine": _machine(),
        "model": "demo (SmolLM2-135M-Instruct from a Q4_1 GGUF, Hermes tags)",
        "probe_chunks": probe_chunks,
        "headline": stocks,
        "timings": timings,
        "pairs": pairs,
    }


def pair(source, bf16: Path, imatrix, errors, stock: str, work: Path, probe_chunks: int):
    from quantkit.backends.gguf.auto import choose_recipe
    from quantkit.backends.gguf.auto.weights import BF16File
    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.formats.gguf_read import tensor_types
    from quantkit.formats.gguf_types import AUTO_TYPES
    from quantkit.planning.budget import FILE, Budget

    stock_path = work / f"demo-{stock}.gguf"
    tick = time.perf_counter()
    quantize_gguf(bf16, stock_path, stock, imatrix=imatrix, imatrix_file="demo.imatrix.gguf")
    stock_s = time.perf_counter() - tick
    size = stock_path.stat().st_size
    stock_types = set(tensor_types(stock_path).values()) - {"F32", "F16", "BF16"}
    types = (*AUTO_TYPES, *sorted(stock_types - set(AUTO_TYPES)))
    tick = time.perf_counter()
    recipe = choose_recipe(BF16File(bf16), source, Budget(size, FILE, f"{stock}'s size"),
                           imatrix=imatrix, work=work, probe_chunks=probe_chunks, types=types,
                           errors=errors)  # fmt: skip
    choose_s = time.perf_counter() - tick
    auto_path = work / f"demo-AUTO-{stock}.gguf"
    tick = time.perf_counter()
    quantize_gguf(bf16, auto_path, recipe.file_type, imatrix=imatrix,
                  imatrix_file="demo.imatrix.gguf", tensor_types=recipe.types)  # fmt: skip
    auto_s = time.perf_counter() - tick
    ours, theirs = _measure(auto_path, source), _measure(stock_path, source)
    row = {
        "stock": stock,
        "stock_bytes": size,
        "auto_bytes": auto_path.stat().st_size,
        "stock_eval": theirs,
        "auto_eval": ours,
        "kld_diff": _paired(ours["chunk_kld"], theirs["chunk_kld"]),
        "nll_diff": _paired(ours["chunk_nll"], theirs["chunk_nll"]),
        "auto_types": recipe.type_counts(),
        "stock_types": dict(sorted(Counter(tensor_types(stock_path).values()).items())),
        "extra_types_allowed": sorted(set(types) - set(AUTO_TYPES)),
        "gains": {r: m["gain"] for r, m in recipe.method.get("roles", {}).items()},
        "seconds": {"stock quantize": stock_s, "auto choose (probes)": choose_s,
                    "auto quantize": auto_s},  # fmt: skip
    }
    diff = row["kld_diff"]
    print(f"{stock}: {size} B, KLD stock {theirs['kld_mean']:.5f} auto {ours['kld_mean']:.5f} "
          f"(diff {diff['mean']:+.5f} +- {diff['se']:.5f})", flush=True)  # fmt: skip
    stock_path.unlink()
    auto_path.unlink()
    return row


def _measure(path: Path, source) -> dict[str, Any]:
    from quantkit.evaluation.measure import evaluate_artifact

    report = evaluate_artifact(path, source)
    keys = ("kld_mean", "kld_p99", "top1_agreement", "perplexity", "reference_perplexity",
            "chunks", "chunk_kld", "chunk_nll")  # fmt: skip
    return {k: getattr(report, k) for k in keys}


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "se": sd / math.sqrt(n), "chunks": n}


def _machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| stock recipe | size (B) | auto size (B) | mean KLD stock | mean KLD auto | "
        "KLD auto - stock (paired, SE) | KLD p99 stock / auto | top-1 stock / auto | "
        "PPL stock / auto | NLL auto - stock (SE) | stock types | auto types (extra allowed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["pairs"]:
        s, a, d, n = row["stock_eval"], row["auto_eval"], row["kld_diff"], row["nll_diff"]
        verdict = "**better**" if d["mean"] < -2 * d["se"] else "not better"
        lines.append(
            f"| {row['stock']} | {row['stock_bytes']:,} | {row['auto_bytes']:,} "
            f"({row['auto_bytes'] / row['stock_bytes'] - 1:+.2%}) | {s['kld_mean']:.5f} | "
            f"{a['kld_mean']:.5f} | {d['mean']:+.5f} ({d['se']:.5f}), {verdict} | "
            f"{s['kld_p99']:.4f} / {a['kld_p99']:.4f} | {s['top1_agreement']:.2%} / "
            f"{a['top1_agreement']:.2%} | {s['perplexity']:.3f} / {a['perplexity']:.3f} | "
            f"{n['mean']:+.5f} ({n['se']:.5f}) | "
            + ", ".join(f"{t}:{c}" for t, c in row["stock_types"].items() if t != "F32")
            + " | "
            + ", ".join(f"{t}:{c}" for t, c in row["auto_types"].items())
            + (f" ({', '.join(row['extra_types_allowed'])})" if row["extra_types_allowed"] else "")
            + " |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["pairs"], key=lambda r: r["stock_bytes"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, label, marker in (("stock", "llama.cpp stock recipe", "o"),
                               ("auto", "quantkit --quant auto", "s")):  # fmt: skip
        xs = [r[f"{key}_bytes"] / 1e6 for r in rows]
        ys = [r[f"{key}_eval"]["kld_mean"] for r in rows]
        ax.plot(xs, ys, marker=marker, label=label)
    extra = [r for r in rows if r["extra_types_allowed"]]  # auto also had the stock's Q5_1
    ax.plot([r["auto_bytes"] / 1e6 for r in extra], [r["auto_eval"]["kld_mean"] for r in extra],
            linestyle="none", marker="s", markersize=11, markerfacecolor="none", color="black",
            label="auto, also allowed the stock file's Q5_1")  # fmt: skip
    for r in rows:
        ax.annotate(r["stock"], (r["stock_bytes"] / 1e6, r["stock_eval"]["kld_mean"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL divergence from the source (log)")
    ax.set_title("demo model (135M): size vs KLD, same importance matrix")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_doc(results: dict[str, Any], doc: Path, plot_path: str | None) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_convert import write_section  # the one writer of docs/benchmarks.md sections

    timings = ", ".join(f"{k} {v:.1f} s" for k, v in results["timings"].items())
    body = "\n\n".join([
        "",
        table(results),
        f"Shared by every row: {timings}. Machine: {results['machine']}. Probe chunks: "
        f"{results['probe_chunks']}.",
        f"![size vs KLD]({Path(plot_path).name})" if plot_path else "",
    ])  # fmt: skip
    write_section(doc, body, SECTION)


if __name__ == "__main__":
    sys.exit(main())
