"""`quantkit convert`: flags map one to one onto the fields of quantkit.pipeline.convert's
keywords and option objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..backends.gguf.options import PROBE_CHUNKS
from . import console
from .options import (
    BpwOption,
    JsonFlag,
    LlamaServerOption,
    MaxSizeOption,
    ProfileOption,
    QuietFlag,
    RepackOption,
    RevisionOption,
    ServerCheckFlag,
)

EXAMPLES = """
Examples:

  quantkit convert ./Hermes-3-Llama-3.1-8B --profile rtx4090-4bit --out ./hermes3-8b-q4

  quantkit convert NousResearch/Hermes-3-Llama-3.1-8B --format gguf --quant Q8_0 --out ./q8

  quantkit convert ./Hermes-3-Llama-3.1-8B --format gguf --quant IQ3_M --imatrix auto --out ./iq3

  quantkit convert ./Hermes-3-Llama-3.1-8B --profile rtx4090-4bit --quant auto --out ./auto

  quantkit convert ./Hermes-3-Llama-3.1-8B --format gguf --quant auto --max-size 5GB --out ./5gb

  quantkit convert ./Hermes-3-8B --recipe ./5gb/Hermes-3-8B-AUTO.recipe.json --out ./again

  quantkit convert ./Hermes-3-Llama-3.1-8B --format mlx --quant 4bit --out ./hermes3-8b-mlx

  quantkit convert ./model --profile rtx4090-4bit --out ./x --dry-run --json
"""


def register(app: typer.Typer) -> None:
    app.command(name="convert", epilog=EXAMPLES)(convert_command)


def convert_command(
    model: Annotated[str, typer.Argument(help="Model folder or Hub repo id (owner/name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not exist).")],
    profile: ProfileOption = None,
    format: Annotated[  # noqa: A002 - the flag is --format
        str | None, typer.Option("--format", "-f", help="gguf, safetensors, fp8, gptq or mlx.")
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            "-q",
            help="GGUF: Q4_K_M, Q8_0, BF16..., or auto (a type per tensor for a memory "
            "budget, docs/quantization.md); BF16/FP16, FP8_DYNAMIC/FP8, W4A16; MLX: 4bit, "
            "6bit, 8bit, BF16 or mlx-lm's mixed recipes mixed_2_6, mixed_3_4, mixed_3_6, "
            "mixed_4_6.",
        ),
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", help="Context length the plan must fit.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; write nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Convert even if the plan does not fit.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the artifact in its runtime.")
    ] = True,
    server_check: ServerCheckFlag = True,
    llama_server: LlamaServerOption = None,
    keep_intermediate: Annotated[
        bool,
        typer.Option(
            "--keep-intermediate",
            help="Quantize through a BF16 GGUF and keep it next to the result.",
        ),
    ] = False,
    revision: RevisionOption = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickled (*.bin) weights.")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a model that ships code.")
    ] = False,
    token_type: Annotated[
        list[str] | None,
        typer.Option("--token-type", help="Override a token's GGUF type: '<think>=control'."),
    ] = None,
    pre_tokenizer: Annotated[
        str | None, typer.Option("--pre-tokenizer", help="llama.cpp pre-tokenizer name.")
    ] = None,
    evaluate: Annotated[
        bool,
        typer.Option("--eval/--no-eval", help="Measure perplexity/KLD against the source."),
    ] = True,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Fail when the quality gate fails.")
    ] = True,
    eval_corpus: Annotated[
        Path | None, typer.Option("--eval-corpus", help="Your own eval text (default: shipped).")
    ] = None,
    eval_ctx: Annotated[int, typer.Option("--eval-ctx", help="Eval chunk length.")] = 512,
    repack: RepackOption = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="builtin (default), a .jsonl file, or hf:NAME[:CONFIG]:SPLIT (FP8 static, "
            "GPTQ, GGUF imatrix).",
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option(help="Calibration samples (default 256; 8 for an imatrix).")
    ] = None,
    calibration_seq_len: Annotated[
        int | None,
        typer.Option(help="Tokens per calibration sample (default 2048; imatrix chunk 512)."),
    ] = None,
    calibration_seed: Annotated[int, typer.Option(help="Seed of the calibration draw.")] = 0,
    think_share: Annotated[
        float | None, typer.Option(help="Share of <think> samples in the calibration set.")
    ] = None,
    tool_share: Annotated[
        float | None, typer.Option(help="Share of tool-call samples in the calibration set.")
    ] = None,
    group_size: Annotated[int, typer.Option(help="GPTQ group size.")] = 128,
    actorder: Annotated[bool, typer.Option("--actorder", help="GPTQ activation order.")] = False,
    dampening: Annotated[float, typer.Option(help="GPTQ dampening fraction.")] = 0.01,
    gptq_format: Annotated[
        str,
        typer.Option(help="compressed-tensors, or gptq to add the classic GPTQ layout too."),
    ] = "compressed-tensors",
    max_shard_size_gb: Annotated[
        float, typer.Option("--max-shard-size", help="Safetensors shard size in GB.")
    ] = 5.0,
    quantize_lm_head: Annotated[
        bool, typer.Option("--quantize-lm-head", help="FP8/GPTQ: quantize lm_head too.")
    ] = False,
    mlx_group_size: Annotated[
        int,
        typer.Option(
            "--mlx-group-size", help="MLX: input columns per scale/bias pair (32, 64, 128)."
        ),
    ] = 64,
    imatrix: Annotated[
        str | None,
        typer.Option(
            "--imatrix",
            help="GGUF importance matrix: auto (computed from the calibration set, default 8 "
            "samples, ~4 chunks of 512 tokens; --calibration-samples 256 gives ~110 chunks, the "
            "size llama-imatrix users typically feed), a GGUF imatrix FILE (copied into the "
            "artifact), or none. Default: auto for the types llama.cpp needs one for (IQ1_*, "
            "IQ2_*, IQ3_XXS, Q2_K_S); else the profile's setting, for types of 4 bits and lower.",
        ),
    ] = None,
    max_size: MaxSizeOption = None,
    bpw: BpwOption = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="Apply a .recipe.json a --quant auto convert wrote (implies --quant auto): "
            "the same type per tensor, on this or another model of the same shape.",
        ),
    ] = None,
    auto_probe_chunks: Annotated[
        int,
        typer.Option(
            "--auto-probe-chunks", min=0,
            help="quant auto: evaluation chunks (512 tokens) per tensor-role probe (one "
            "short KL measurement per role); 0 skips the probes (every role weighs the "
            "same).",
        ),
    ] = PROBE_CHUNKS,
    push_to: Annotated[
        str | None,
        typer.Option(
            "--push-to", help="Upload the checked artifact to this Hub repo (OWNER/NAME)."
        ),
    ] = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Convert a model into an artifact for your hardware, then check it."""
    from ..backends.gguf.options import GGUFOptions
    from ..backends.mlx.options import MLXOptions
    from ..backends.safetensors.options import GPTQOptions, SafetensorsOptions
    from ..calibration.options import CalibrationOptions
    from ..evaluation.options import EvalOptions
    from ..inspection.options import ServerOptions, VerifyOptions
    from ..pipeline import convert

    console.configure(json_mode=json_out, quiet=quiet)
    with console.progress("converting", None) as bar:
        result = convert(
            model,
            out=out,
            profile=profile,
            format=format,
            quant=quant,
            context=context,
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            calibration=CalibrationOptions(
                source=calibration,
                samples=calibration_samples,
                seq_len=calibration_seq_len,
                seed=calibration_seed,
                think_share=think_share,
                tool_share=tool_share,
            ),
            gguf=GGUFOptions(
                keep_intermediate=keep_intermediate,
                token_types=_parse_token_types(token_type or []),
                pre_tokenizer=pre_tokenizer,
                imatrix=imatrix,
                max_size=max_size,
                bpw=bpw,
                recipe=recipe,
                auto_probe_chunks=auto_probe_chunks,
                repack=repack,
            ),
            gptq=GPTQOptions(
                group_size=group_size, actorder=actorder, dampening=dampening, layout=gptq_format
            ),
            safetensors=SafetensorsOptions(
                max_shard_size=int(max_shard_size_gb * 10**9), quantize_lm_head=quantize_lm_head
            ),
            mlx=MLXOptions(group_size=mlx_group_size),
            evaluation=EvalOptions(
                enabled=evaluate, gate=gate, corpus=eval_corpus, n_ctx=eval_ctx
            ),
            verify=VerifyOptions(
                enabled=verify, server=ServerOptions(enabled=server_check, binary=llama_server)
            ),
            force=force,
            dry_run=dry_run,
            push_to=push_to,
            progress=bar.update,
        )
    payload = result.to_dict()
    if json_out:
        console.print_json(payload)
    else:
        _render(payload)


def _parse_token_types(items: list[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        token, sep, kind = item.rpartition("=")
        if not sep or not token:
            raise typer.BadParameter(f"{item!r}: expected TOKEN=TYPE, e.g. '<think>=control'.")
        parsed[token] = kind
    return parsed


_FILE_COLUMNS = (
    console.Col("file", keep=True),
    console.Col("size", justify="right"),
    console.Col("tensor types"),
    console.Col("sha256", keep=True),
)
_CHECK_COLUMNS = (
    console.Col("check", keep=True),
    console.Col("result", keep=True),
    console.Col("evidence"),
)


def _mark(check: dict[str, Any]) -> str:
    if check["passed"]:
        return "[green]pass[/]"
    return "[red]FAIL[/]" if check["fatal"] else "[yellow]warn[/]"


def _render(payload: dict[str, Any]) -> None:
    from rich.markup import escape

    src = payload["source"]
    console.print_text(
        f"[bold]{src['name']}[/] ({src['architecture']}, {src['parameters'] / 1e6:,.0f}M "
        f"parameters) -> {payload['format']} {payload['quant']}"
        + (f" for profile [bold]{payload['profile']}[/]" if payload["profile"] else "")
    )
    plan = payload.get("plan")
    if plan:
        console.print_text(
            f"plan: fit={plan['fit']}, weights {plan['weights_bytes'] / 1e9:.2f} GB, "
            f"total {plan['total_bytes'] / 1e9:.2f} GB, max context {plan['max_context']:,}"
        )
        console.print_text(f"run with: {escape(plan['command'])}", soft_wrap=True)
    if payload["dry_run"]:
        download = payload.get("download_bytes") or 0
        fetch = (
            f" after downloading {download / 1e9:.2f} GB of weights (none downloaded yet)"
            if download
            else ""
        )
        console.print_text(
            f"dry run: would write about {payload['estimated_bytes'] / 1e9:.2f} GB{fetch}; "
            "nothing written."
        )
        if payload.get("cost"):
            console.print_cost(payload["cost"])
        return
    console.print_text(f"artifact: {escape(str(payload['out']))}", soft_wrap=True)
    rows = [
        (
            escape(f["name"]),
            f"{f['bytes'] / 1e6:,.1f} MB",
            ", ".join(f"{k}:{v}" for k, v in sorted(f.get("tensor_types", {}).items())),
            f["sha256"][:16],
        )
        for f in payload["files"]
    ]
    console.print_table(_FILE_COLUMNS, rows)
    matrix = payload["files"][0].get("imatrix") if payload["files"] else None
    if matrix and matrix.get("skipped"):
        console.print_text(
            f"importance matrix: none ({escape(matrix['origin'])} default skipped: "
            f"{escape(matrix['skipped'])})"
        )
    elif matrix:
        console.print_text(
            f"importance matrix: {escape(matrix['file'])} ({matrix['entries']} entries, "
            f"{matrix['chunk_count']} chunks of {matrix['chunk_size']} tokens; "
            f"{escape(matrix['origin'])})"
        )
    recipe = payload.get("recipe")
    if recipe:
        budget = recipe.get("budget") or {}
        where = f", budget {budget['bytes'] / 1e9:.3f} GB from {budget['origin']}" if budget else ""
        console.print_text(
            f"recipe: {escape(recipe['file'])} ({recipe['file_type']}-sized{escape(where)}; "
            + ", ".join(f"{k}:{v}" for k, v in recipe["types"].items()) + ")"
        )
    if payload["checks"]:
        rows = [(escape(c["name"]), _mark(c), escape(c["evidence"])) for c in payload["checks"]]
        console.print_table(_CHECK_COLUMNS, rows, title="checks")
    quality = payload.get("quality")
    if quality:
        console.print_text(
            f"quality vs source ({quality['tokens']} tokens, {escape(quality['engine'])}): "
            f"perplexity {quality['perplexity']:.3f} "
            f"(source {quality['reference_perplexity']:.3f}), "
            f"mean KLD {quality['kld_mean']:.4f}, p99 {quality['kld_p99']:.4f}, "
            f"top-1 agreement {quality['top1_agreement']:.1%}"
        )
    if payload.get("published"):
        pub = payload["published"]
        console.print_text(f"uploaded to {escape(pub['repo_id'])} ({escape(pub['revision'])})")

