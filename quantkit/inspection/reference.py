"""The `--against` side of an inspection: the source model's tokenizer files and config.

Only the tokenizer, templates and config are needed (never the weights), so a source can be
a full model folder, a folder with just the tokenizer files, or a Hub repo id, from which
only those files are fetched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SourceModelError
from ..source.tokenizer_bundle import TOKENIZER_FILES, TokenizerBundle, load_tokenizer_bundle


@dataclass(frozen=True)
class Reference:
    path: Path
    bundle: TokenizerBundle = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)


def reference_from_source(source) -> Reference:
    """A Reference for an already loaded SourceModel (what convert has at hand)."""
    if source.tokenizer is None:
        raise SourceModelError(f"{source.path} has no tokenizer.json to check against.")
    return Reference(Path(source.path), source.tokenizer, dict(source.config))


def load_reference(against: str | Path, *, revision: str | None = None) -> Reference:
    path = Path(against).expanduser()
    if path.is_file():
        raise SourceModelError(
            f"--against {against} is a file; it takes the source model's folder or Hub id.",
            hint="Pass the Hugging Face folder the artifact was converted from.",
        )
    if not path.is_dir():
        text = str(against)
        if text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise SourceModelError(
                f"--against {against} is neither an existing folder nor a Hub repo id."
            )
        path = _fetch_tokenizer_files(text, revision)
    bundle = load_tokenizer_bundle(path)
    config_path = path / "config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SourceModelError(f"{config_path} is not valid JSON ({exc}).") from exc
    return Reference(path, bundle, config)


def _fetch_tokenizer_files(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "additional_chat_templates/*.jinja", *TOKENIZER_FILES]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any Hub failure is the same advice
        raise SourceModelError(
            f"Could not fetch the tokenizer files of {repo_id} from the Hub ({exc}).",
            hint="Check the repo id and your network, or pass a local folder.",
        ) from exc
