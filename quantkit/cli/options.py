"""The options several commands share, declared once: the same flag, short name and help
everywhere it appears."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

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

LlamaServerOption = Annotated[
    str | None,
    typer.Option(
        "--llama-server",
        help="Your own llama-server build (else QUANTKIT_LLAMA_SERVER, quantkit's build, PATH).",
    ),
]
ServerCheckFlag = Annotated[
    bool,
    typer.Option(
        "--server-check/--no-server-check",
        help="The tool-call and reasoning round trip through the artifact's server (loads "
        "the weights): llama-server for a GGUF, vLLM for a safetensors folder (where vLLM "
        "and a CUDA GPU are present; else skipped with the reason).",
    ),
]
RepackOption = Annotated[
    bool | None,
    typer.Option(
        "--repack/--no-repack",
        help="llama.cpp's weight repacking when a GGUF is loaded for checks and evaluation "
        "(llama-server's --no-repack): off keeps the weights memory-mapped instead of "
        "copying some of its matrices (Q4_0, Q4_K, IQ4_NL; Q2_K with AVX-512) into RAM, but "
        "is slower and its plain kernels round differently. convert's default: on unless "
        "the copy would not fit the RAM.",
    ),
]


def _flags_without_metavar(params: list) -> list:
    """A flag takes no value, but typer's rich help prints its type (`--dry-run <bool>`,
    `-v <int>`), which reads as if it wanted one. An empty metavar prints nothing there."""
    for param in params:
        if (getattr(param, "is_flag", False) or getattr(param, "count", False)) and (
            param.metavar is None
        ):
            param.metavar = ""
    return params


class FlagsCommand(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _flags_without_metavar(super().get_params(ctx))


class FlagsGroup(TyperGroup):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _flags_without_metavar(super().get_params(ctx))


class App(typer.Typer):
    """typer.Typer whose commands print flags as flags in --help (FlagsCommand)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=FlagsGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", FlagsCommand)
        return super().command(*args, **kwargs)


# --quant auto's budget, shared by convert and plan
MaxSizeOption = Annotated[
    str | None,
    typer.Option(
        "--max-size",
        help="quant auto: the largest the GGUF file may be, e.g. 20GB or 18.5GiB (default: "
        "what the profile's devices hold at the context).",
    ),
]
BpwOption = Annotated[
    float | None,
    typer.Option(
        "--bpw", help="quant auto: bits per weight over the whole file, e.g. 4.5 (like "
        "llama-quantize's BPW).",
    ),
]
