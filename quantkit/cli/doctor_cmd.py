"""`quantkit doctor`: the runtimes this machine has and their versions
(quantkit.runtime.doctor); `--build-llama-server` builds llama-server first."""

from __future__ import annotations

from typing import Annotated

import typer

from . import console
from .options import JsonFlag, LlamaServerOption, QuietFlag

EXAMPLES = """
Examples:

  quantkit doctor

  quantkit doctor --llama-server ~/llama.cpp/build/bin/llama-server

  quantkit doctor --build-llama-server

  quantkit doctor --json
"""


def register(app: typer.Typer) -> None:
    app.command(name="doctor", epilog=EXAMPLES)(doctor_command)


def doctor_command(
    llama_server: LlamaServerOption = None,
    build: Annotated[
        bool,
        typer.Option(
            "--build-llama-server",
            help="First build llama-server from the llama.cpp quantkit pins (about 5 "
            "minutes on 2 cores, once), then report.",
        ),
    ] = False,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Show which runtimes are installed, their versions and what quantkit uses them for.

    Exit 0 whatever is missing (each is optional until a command needs it).

    A failed --build-llama-server exits 9.
    """
    from ..runtime.doctor import runtimes
    from ..runtime.llama_server import build_folder, build_llama_server

    console.configure(json_mode=json_out, quiet=quiet)
    if build:
        console.print_text(
            f"Building llama-server into {build_folder()}: about 5 minutes on 2 cores the "
            "first time, at once when it is already built.",
            soft_wrap=True,
        )
        built = build_llama_server()
        console.print_text(f"llama-server: {built.path}", soft_wrap=True)
    found = runtimes(str(llama_server) if llama_server else None)
    if json_out:
        console.print_json({"runtimes": [r.to_dict() for r in found]})
    else:
        _render(found)


_COLUMNS = (
    console.Col("runtime", keep=True),
    console.Col("version", keep=True),
    console.Col("detail"),
)


def _render(found) -> None:
    from rich.markup import escape

    rows = [
        (
            escape(r.name),
            f"[green]{escape(r.version or 'yes')}[/]" if r.available else "[red]missing[/]",
            escape(r.detail),
        )
        for r in found
    ]
    console.print_table(_COLUMNS, rows)
