"""The source side of an inspection, remembered.

What transformers makes of a source tokenizer (the battery's renderings, the corpus's ids,
BOS/EOS/PAD ids) depends only on the tokenizer files, the transformers version and the
battery, so it is stored in QUANTKIT_CACHE keyed by exactly those. Converting one source to
several types, or inspecting several artifacts of it, then neither imports transformers
(about 3 s) nor loads the tokenizer again; a miss computes the answer in transformers, as
without the cache. Only the source is cached, never the artifact's runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from ..disk.atomic import building_file
from ..disk.cache import cache_dir
from .battery import CONVERSATIONS, CORPUS, Conversation
from .sides import RenderFailure, Side, TransformersSide

log = logging.getLogger(__name__)
_FORMAT = 1  # bump when what is stored changes


def _key(folder: Path) -> str:
    digest = hashlib.sha256(f"format {_FORMAT}\n".encode())
    # transformers renders and picks the tokenizer class; `tokenizers` encodes.
    for package in ("transformers", "tokenizers"):
        try:
            digest.update(f"{package} {metadata.version(package)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"no {package}\n".encode())
    digest.update(repr((CONVERSATIONS, CORPUS)).encode())
    names = [
        "config.json",  # its model_type decides the tokenizer class transformers builds
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
    ]
    paths = [folder / n for n in names] + sorted(folder.glob("additional_chat_templates/*"))
    for path in paths:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _complete(data: object) -> bool:
    """Every entry a cache file must hold, of the right kind."""
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        return False
    return all(isinstance(data.get(key), dict) for key in ("render", "encode", "ids"))


class CachedTransformersSide(Side):
    """TransformersSide's answers for `folder`, from the cache where it has them."""

    def __init__(self, folder: Path, label: str) -> None:
        self.folder = folder
        self.label = label
        self._path = cache_dir("inspect-source", f"{_key(folder)}.json")
        self._data: dict[str, Any] = {}
        self._dirty = False
        self._live: TransformersSide | None = None
        try:
            self._data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._data = {}
        if not _complete(self._data):  # an old, foreign or damaged file: a miss
            self._data = {"templates": self.live.templates, "render": {}, "encode": {},
                          "ids": {}}  # fmt: skip
            self._dirty = True
        self.templates = dict(self._data["templates"])

    @property
    def live(self) -> TransformersSide:
        if self._live is None:
            self._live = TransformersSide(self.folder, self.label)
        return self._live

    def render(self, name: str, conv: Conversation) -> str:
        key = f"{name}\0{conv.name}"
        stored = self._data["render"].get(key)
        if stored is None:
            try:
                stored = {"text": self.live.render(name, conv)}
            except RenderFailure as exc:
                if exc.limit:  # time depends on the machine's load: never remembered
                    raise
                stored = {"error": str(exc), "security": exc.security}
            self._data["render"][key] = stored
            self._dirty = True
        if "error" in stored:
            raise RenderFailure(stored["error"], security=stored["security"])
        return stored["text"]

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        key = f"{int(add_special)}\0{text}"
        ids = self._data["encode"].get(key)
        if ids is None:
            ids = self.live.encode(text, add_special=add_special)
            self._data["encode"][key] = ids
            self._dirty = True
        return list(ids)

    def piece(self, token_id: int) -> str:
        return self.live.piece(token_id)  # only for the evidence of a failure

    def token_id(self, attr: str) -> int | None:
        if attr not in self._data["ids"]:
            self._data["ids"][attr] = self.live.token_id(attr)
            self._dirty = True
        return self._data["ids"][attr]

    def save(self) -> None:
        """Write what was learnt (atomically: a crash leaves the old file or none)."""
        if not self._dirty:
            return
        try:
            with building_file(self._path, per_process=True) as partial:
                partial.write_text(json.dumps(self._data, ensure_ascii=False), encoding="utf-8")
            self._dirty = False
        except OSError as exc:  # a read-only cache costs time, not correctness
            log.debug("could not write %s: %s", self._path, exc)
