"""`quantkit inspect`: the survival checks on any artifact (quantkit.inspection)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import console
from .options import (
    AgainstOption,
    JsonFlag,
    LlamaServerOption,
    QuietFlag,
    RepackOption,
    RevisionOption,
    ServerCheckFlag,
)

EXAMPLES = """
Examples:

  quantkit inspect ./hermes3-8b-q4/Hermes-3-Llama-3.1-8B-Q4_K_M.gguf

  quantkit inspect ./hermes3-8b-q4 --against ./Hermes-3-Llama-3.1-8B

  quantkit inspect ./model-00001-of-00003.gguf --against NousResearch/Hermes-3-Llama-3.1-70B

  quantkit inspect ./hermes3-8b-fp8 --against ./Hermes-3-Llama-3.1-8B --json
"""


def register(app: typer.Typer) -> None:
    app.command(name="inspect", epilog=EXAMPLES)(inspect_command)


def inspect_command(
    artifact: Annotated[
        str,
        typer.Argument(help="GGUF file (any shard of a split set), or a safetensors folder."),
    ],
    against: AgainstOption = None,
    generate: Annotated[
        bool,
        typer.Option("--generate", help="Also load the weights and generate a short reply."),
    ] = False,
    revision: RevisionOption = None,
    server_check: ServerCheckFlag = True,
    llama_server: LlamaServerOption = None,
    repack: RepackOption = True,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Check that an artifact's special tokens, turn end and chat templates survived.

    Exit 0 only when every check that ran passes (a check whose runtime is missing, such
    as llama-server for the round trip, is shown as skipped), 11 when any fails, 3 when
    the artifact cannot be read; docs/verification.md explains each check.
    """
    from ..errors import VerificationError
    from ..inspection import ServerOptions, inspect

    console.configure(json_mode=json_out, quiet=quiet)
    server = ServerOptions(enabled=server_check, binary=llama_server)
    report = inspect(artifact, against, generate=generate, revision=revision, server=server,
                     repack=repack is not False)  # fmt: skip
    if json_out:
        console.print_json(report.to_dict())
    else:
        _render(report)
    if not report.passed:
        raise VerificationError(
            f"{report.artifact}: {report.summary()}.",
            hint="See the evidence above and docs/verification.md for what to do.",
        )


_COLUMNS = (
    console.Col("check", keep=True),
    console.Col("result", keep=True),
    console.Col("evidence"),
)


def _render(report) -> None:
    from rich.markup import escape

    against = f" against {escape(report.against)}" if report.against else " (no source given)"
    console.print_text(f"[bold]{escape(report.artifact)}[/] ({report.kind}){against}")
    # Any failed check fails the inspection (exit 11); `fatal` only matters to convert.
    rows = [(escape(c.name), _result(c), escape(c.evidence)) for c in report.checks]
    console.print_table(_COLUMNS, rows)
    style = "green" if report.passed else "bold red"
    console.print_text(f"[{style}]{escape(report.summary())}[/]")


def _result(check) -> str:
    if check.skipped:
        return "[yellow]skipped[/]"
    return "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
