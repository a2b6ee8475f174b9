"""`quantkit eval`: flags map one to one onto quantkit.evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import console
from .options import AgainstOption, JsonFlag, ProfileOption, QuietFlag, RepackOption

EXAMPLES = """
Examples:

  quantkit eval ./hermes3-8b-q4 --against ./Hermes-3-Llama-3.1-8B

  quantkit eval ./model-Q4_K_M.gguf --against ./model-BF16.gguf --json

  quantkit eval ./q4 --against ./src --corpus wiki.test.raw --n-ctx 512 --max-chunks 40
"""


def register(app: typer.Typer) -> None:
    app.command(name="eval", epilog=EXAMPLES)(eval_command)


def eval_command(
    artifact: Annotated[
        str, typer.Argument(help="GGUF file, artifact folder, or transformers folder.")
    ],
    against: AgainstOption,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="A .txt/.jsonl file or folder (default: the shipped one)."),
    ] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Tokens per chunk.")] = 512,
    max_chunks: Annotated[
        int | None, typer.Option("--max-chunks", help="Evaluate at most this many chunks.")
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", "-q", help="Quant type for the gate (default: from the artifact)."),
    ] = None,
    profile: ProfileOption = None,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Fail (exit 17) when the gate fails.")
    ] = True,
    dtype: Annotated[
        str, typer.Option("--dtype", help="transformers compute dtype: float32 or bfloat16.")
    ] = "float32",
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse cached reference logits.")
    ] = True,
    repack: RepackOption = True,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of an artifact against its source."""
    from ..evaluation.evaluate import evaluate

    console.configure(json_mode=json_out, quiet=quiet)
    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"--dtype {dtype!r}: use float32 or bfloat16.")
    with console.progress("evaluating", None) as bar:
        result = evaluate(
            artifact, Path(against), corpus=corpus, n_ctx=n_ctx, max_chunks=max_chunks,
            dtype=dtype, use_cache=cache, quant=quant, profile=profile, progress=bar.update,
            repack=repack is not False,
        )  # fmt: skip
    payload = result.to_dict()
    if json_out:
        console.print_json(payload)
    else:
        _render(payload)
    if gate:
        result.raise_for_gate()


_COLUMNS = (
    console.Col("scored", keep=True),
    *(
        console.Col(header, justify="right")  # a number is one word: the header may wrap
        for header in ("tokens", "PPL", "src PPL", "ratio", "KLD mean", "KLD p99", "top-1")
    ),
)


def _render(payload: dict[str, Any]) -> None:
    from rich.markup import escape

    console.print_text(
        f"[bold]{escape(Path(payload['artifact']).name)}[/] ({payload['engine']}) against "
        f"{escape(payload['source'])} ({payload['reference_engine']}"
        f"{', cached' if payload['reference_cached'] else ''})"
    )
    console.print_text(
        f"corpus {escape(payload['corpus'])}: {payload['chunks']} chunks of {payload['n_ctx']} "
        f"tokens, {payload['tokens']} scored; {payload['tokens_per_second']:.0f} tokens/s"
    )
    spans = [("all", payload)] + [
        (name, stats) for name, stats in payload["spans"].items() if stats["tokens"]
    ]
    rows = [
        (
            escape(name),
            str(stats["tokens"]),
            f"{stats['perplexity']:.4f}",
            f"{stats['reference_perplexity']:.4f}",
            f"{stats['perplexity'] / stats['reference_perplexity']:.4f}",
            f"{stats['kld_mean']:.5f}",
            f"{stats['kld_p99']:.4f}",
            f"{100 * stats['top1_agreement']:.2f}%",
        )
        for name, stats in spans
    ]
    console.print_table(_COLUMNS, rows)
    if payload.get("confident_positions") is not None:
        console.print_text(_confident(payload))
    gate = payload.get("gate")
    if gate is None:
        console.print_text("no quality gate: pass --quant to check one")
    else:
        style = "green" if gate["passed"] else "bold red"
        console.print_text(f"[{style}]{escape(gate['message'])}[/]")


def _confident(payload: dict[str, Any]) -> str:
    """Top-1 agreement where the source is confident (docs/quality.md), and over how many."""
    share, count = payload.get("top1_agreement_confident"), payload["confident_positions"]
    where = (
        f"where the source is confident (its top-1 ahead of the second by >= "
        f"{payload.get('confidence_margin', 0.1):g}): {count} of {payload['tokens']} positions"
    )
    return f"top-1 {100 * share:.2f}% {where}" if share is not None else f"no top-1 {where}"
