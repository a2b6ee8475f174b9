"""The survival checks `quantkit convert` runs on what a backend made: the whole
`quantkit inspect` battery against the source, then a short greedy reply (quantkit.inspection
.generation). Never raises for the artifact: whatever goes wrong inside the checks becomes a
failed fatal check, so convert quarantines the artifact instead of deleting it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import require
from ..planning.cost import REPLY_TOKENS
from .check import LOADS, Check, crashed_check
from .generation import generation_check, gguf_generation_check
from .options import ServerOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..formats.tokens import TokenTypePolicy
    from ..source.model import SourceModel
    from .reference import Reference


def check_converted(
    artifact: Path,
    source: SourceModel,
    *,
    policy: TokenTypePolicy | None = None,
    server: ServerOptions | None = None,
) -> list[Check]:
    """The checks for what a backend made: a GGUF file in llama.cpp (`policy`: the token
    types it was written with), an MLX folder in mlx-lm, another folder in transformers."""
    from ..artifact.locate import is_mlx_folder

    if artifact.is_dir():
        if is_mlx_folder(artifact):
            return check_mlx(artifact, source)
        return check_safetensors(artifact, source, server=server)
    return check_gguf(artifact, source, policy=policy, server=server)


def check_gguf(
    path: Path,
    source: SourceModel,
    *,
    max_new_tokens: int = REPLY_TOKENS,
    policy: TokenTypePolicy | None = None,
    server: ServerOptions | None = None,
) -> list[Check]:
    """The full inspection of a GGUF against its source (tokens, token types, turn end,
    BOS/PAD, templates, the rendering battery, tokenization, rope; quantkit.inspection),
    then a short greedy reply with the weights loaded, then (`server`) the round trip
    through llama-server (unless `server.enabled` is off). `policy` is the token-type
    policy the GGUF was written with (convert's --token-type overrides)."""
    require("llama_cpp", "gguf")
    from . import round_trip_checks
    from .gguf_checks import gguf_checks
    from .gguf_meta import gguf_files

    path = Path(path)
    checks = _battery_then_reply(
        source,
        lambda reference: gguf_checks(gguf_files(path), reference, policy=policy),
        lambda reference: gguf_generation_check(path, reference, max_new_tokens),
    )
    server = server or ServerOptions()
    crashed = any(c.name == LOADS and not c.passed for c in checks)
    if server.enabled and source.tokenizer is not None and not crashed:
        try:
            checks += round_trip_checks(path, server.binary, policy)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, not a lost artifact
            checks.append(crashed_check(exc))
    return checks


def check_safetensors(
    folder: Path,
    source: SourceModel,
    *,
    generate: bool = True,
    max_new_tokens: int = REPLY_TOKENS,
    server: ServerOptions | None = None,
) -> list[Check]:
    """The full inspection of a safetensors folder against its source (added tokens, eos,
    BOS/PAD, templates, the rendering battery, tokenization), then a greedy reply on CPU,
    then the round trip through vLLM's server (skipped with the reason without vLLM and a
    GPU)."""
    require("transformers", "compress")
    from .safetensors_checks import safetensors_checks

    checks = _battery_then_reply(
        source,
        lambda reference: safetensors_checks(folder, reference),
        (lambda _: generation_check(folder, max_new_tokens=max_new_tokens)) if generate else None,
    )
    crashed = any(c.name == LOADS and not c.passed for c in checks)
    if (server or ServerOptions()).enabled and source.tokenizer is not None and not crashed:
        from .vllm_checks import vllm_checks

        try:
            checks += vllm_checks(folder)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, not a lost artifact
            checks.append(crashed_check(exc))
    return checks


def check_mlx(
    folder: Path, source: SourceModel, *, generate: bool = True, max_new_tokens: int = REPLY_TOKENS
) -> list[Check]:
    """The full inspection of an MLX folder against its source in mlx-lm (added tokens, turn
    end among mlx-lm's eos ids, BOS/PAD, templates, the rendering battery, tokenization,
    the streaming detokenizer), then a greedy reply through mlx-lm."""
    require("mlx_lm", "mlx")
    from .mlx_checks import mlx_checks, mlx_generation_check

    return _battery_then_reply(
        source,
        lambda reference: mlx_checks(folder, reference),
        (lambda _: mlx_generation_check(folder, max_new_tokens=max_new_tokens))
        if generate
        else None,
    )


def _battery_then_reply(
    source: SourceModel,
    battery: Callable[[Reference], list[Check]],
    reply: Callable[[Reference], Check] | None,
) -> list[Check]:
    """The battery against the source, then the reply. Never raises for the artifact:
    whatever goes wrong inside the checks becomes a failed fatal check, so convert
    quarantines the artifact instead of deleting it."""
    from .reference import reference_from_source

    if source.tokenizer is None:
        return [Check("special tokens single ids", True, "source has no tokenizer", False)]
    checks: list[Check] = []
    try:
        reference = reference_from_source(source)
        checks += battery(reference)
        if reply is not None:
            checks.append(reply(reference))
    except Exception as exc:  # noqa: BLE001 - KeyboardInterrupt and SystemExit still stop
        checks.append(crashed_check(exc))
    return checks
