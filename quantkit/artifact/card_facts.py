"""What a model card is made from: the chat side of an artifact (templates, turn end,
Hermes tags and their types) read from the artifact itself, the source's README front
matter, and the source's Hub id. Nothing here renders; quantkit.artifact.card does."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.tokens import HERMES_TAGS
from ..source.model import hub_cache_identity

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".gguf", ".safetensors")
_TOKEN_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}


@dataclass(frozen=True)
class TokenFacts:
    """The chat side of an artifact, read from the artifact itself."""

    templates: dict[str, str] = field(default_factory=dict)
    turn_end: str | None = None
    tags: dict[str, tuple[int, str]] = field(default_factory=dict)  # tag -> (id, type)
    read_from: str = ""


def is_weights(f: dict[str, Any]) -> bool:
    """A weights file (an importance matrix is a .gguf too, but not a model)."""
    return f["name"].endswith(_WEIGHT_SUFFIXES) and f.get("role") != "imatrix"


def source_card_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter of the source model's README.md: from the source folder, or
    from the Hugging Face cache for a Hub source (no network)."""
    source = manifest.get("source", {})
    if source.get("card_metadata"):
        return dict(source["card_metadata"])  # recorded at convert time
    readme = None
    requested = source.get("requested")
    if requested and Path(requested).expanduser().is_dir():
        candidate = Path(requested).expanduser() / "README.md"
        readme = candidate if candidate.is_file() else None
    elif source.get("repo_id"):
        readme = _cached_hub_file(source["repo_id"], "README.md", source.get("revision"))
    if readme is None:
        return {}
    return parse_front_matter(readme.read_text(encoding="utf-8", errors="replace"))


def parse_front_matter(text: str) -> dict[str, Any]:
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        log.warning("The source README.md has front matter that is not valid YAML")
        return {}
    return data if isinstance(data, dict) else {}


def resolve_base_model(manifest: dict[str, Any]) -> str | None:
    """The source's Hub id: recorded by the manifest, or the id a local folder came from
    (a Hugging Face cache snapshot path, or config.json's `_name_or_path`)."""
    source = manifest.get("source", {})
    if source.get("repo_id"):
        return source["repo_id"]
    requested = str(source.get("requested") or "")
    if not requested:
        return None
    # Manifests written before convert recorded a cache snapshot's repo id name it only here.
    snapshot_repo, _ = hub_cache_identity(Path(requested).expanduser())
    if snapshot_repo:
        return snapshot_repo
    config = Path(requested).expanduser() / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "")
        except (OSError, ValueError):
            name = ""
        if isinstance(name, str) and _REPO_ID.match(name) and not Path(name).exists():
            return name
    return None


def read_token_facts(
    folder: Path, manifest: dict[str, Any], files: list[dict[str, Any]]
) -> TokenFacts:
    ggufs = [folder / f["name"] for f in files if is_weights(f) and f["name"].endswith(".gguf")]
    ggufs = [p for p in ggufs if p.is_file()]
    if ggufs:
        return _facts_from_gguf(ggufs[0])
    if (folder / "tokenizer.json").is_file():
        return _facts_from_folder(folder)
    requested = manifest.get("source", {}).get("requested")
    if manifest["target"]["format"] == "gguf" and not ggufs:
        # A dry run before a split: the unsplit file still holds the metadata.
        unsplit = [p for p in folder.glob("*.gguf")]
        if unsplit:
            return _facts_from_gguf(unsplit[0])
    if requested and (Path(requested) / "tokenizer.json").is_file():
        return _facts_from_folder(Path(requested))
    return TokenFacts()


def _facts_from_gguf(path: Path) -> TokenFacts:
    from gguf import Keys

    from ..formats.gguf_read import chat_template_key, read_metadata

    wanted = {Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.EOT_ID,
              Keys.Tokenizer.EOS_ID}  # fmt: skip
    meta = read_metadata(
        path, lambda key: key.startswith(Keys.Tokenizer.CHAT_TEMPLATE) or key in wanted
    )
    templates = {}
    if isinstance(meta.get(Keys.Tokenizer.CHAT_TEMPLATE), str):
        templates["default"] = meta[Keys.Tokenizer.CHAT_TEMPLATE]
    for name in meta.get(Keys.Tokenizer.CHAT_TEMPLATES) or []:
        text = meta.get(chat_template_key(name))
        if isinstance(text, str):
            templates[name] = text
    vocab = meta.get(Keys.Tokenizer.LIST) or []
    kinds = meta.get(Keys.Tokenizer.TOKEN_TYPE) or []
    end_id = meta.get(Keys.Tokenizer.EOT_ID)
    if end_id is None:
        end_id = meta.get(Keys.Tokenizer.EOS_ID)
    turn_end = vocab[end_id] if isinstance(end_id, int) and 0 <= end_id < len(vocab) else None
    tags = {
        text: (index, _TOKEN_TYPES.get(kinds[index], "?") if index < len(kinds) else "?")
        for index, text in enumerate(vocab)
        if text in HERMES_TAGS
    }
    return TokenFacts(templates, turn_end, tags, read_from=path.name)


def _facts_from_folder(folder: Path) -> TokenFacts:
    from ..formats.chat_template import TemplateError, turn_end_token
    from ..source.tokenizer_bundle import load_tokenizer_bundle

    bundle = load_tokenizer_bundle(folder)
    specials = [t.content for t in bundle.added_tokens if t.special]
    turn_end = None
    if "default" in bundle.chat_templates:
        try:
            turn_end = turn_end_token(bundle.chat_templates["default"], specials)
        except TemplateError:
            turn_end = None
    tags = {
        t.content: (t.id, "special" if t.special else "added")
        for t in bundle.added_tokens
        if t.content in HERMES_TAGS
    }
    return TokenFacts(dict(bundle.chat_templates), turn_end, tags, read_from="tokenizer files")


def _cached_hub_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None
