"""The `quantkit` command: a Typer app whose commands only parse, call the library and
render. Errors become one line and an exit code (QUANTKIT_DEBUG=1 shows the traceback).

Each command lives in its own module with a `register(app)` function; modules are
imported lazily-light (no torch, no llama_cpp at import) so `quantkit --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from ..errors import QuantkitError
from ..version import __version__
from . import console
from .options import App

app = App(
    name="quantkit",
    help="Quantize Hermes-family chat models for your hardware, with their special tokens, "
    "chat templates and quality checked.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        console.print_text(f"quantkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    level = logging.WARNING - 10 * verbose
    if os.environ.get("QUANTKIT_DEBUG"):
        level = logging.DEBUG
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


def _register_commands() -> None:
    from . import convert_cmd

    convert_cmd.register(app)
    for module_name in (
        "plan_cmd",
        "profiles_cmd",
        "demo_cmd",
        "eval_cmd",
        "inspect_cmd",
        "upload_cmd",
        "doctor_cmd",
    ):
        try:
            module = __import__(f"{__name__}.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as exc:  # a command still being written
            if module_name not in str(exc):
                raise
            continue
        module.register(app)


_register_commands()


def main() -> None:
    from ..runtime import interrupts

    interrupts.install()  # a Ctrl-C swallowed inside a C callback is raised again later
    try:
        status = app(standalone_mode=False)
    except QuantkitError as exc:
        if os.environ.get("QUANTKIT_DEBUG"):
            raise
        console.print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        status = _INTERRUPTED
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if status == _INTERRUPTED:
        console.print_error("interrupted; nothing that looks finished was left behind")
    sys.exit(status if isinstance(status, int) else 0)


_INTERRUPTED = 130  # what shells report for SIGINT; typer returns it for KeyboardInterrupt


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors (bad option, missing argument). Typer vendors its own click, so
    match the interface rather than a class that may be a different copy."""
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)
