"""The options several commands share, declared once: the same flag, short name and help
everywhere it appears."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", help="Print nothing but errors.")]
RevisionOption = Annotated[
    str | None, typer.Option("--revision", help="Hub revision of the model (branch, tag, commit).")
]
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="Hardware profile: a name (quantkit profiles) or .toml."),
]
AgainstOption = Annotated[
    str | None,
    typer.Option(
        "--against", "-a", help="The source model: HF folder or Hub repo id (eval: or a GGUF)."
    ),
]
