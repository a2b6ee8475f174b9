"""The tokenizer side of a model folder: tokenizer.json, tokenizer_config.json, the chat
template(s) and generation_config.json, read as they are on disk (no transformers needed).

Chat templates are found wherever transformers 4 and 5 put them: a string or a list of
named templates in tokenizer_config.json, chat_template.jinja, chat_template.json, and
additional_chat_templates/<name>.jinja. The default template is named "default".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SourceModelError
from ..formats.chat_template import turn_end_token

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class AddedToken:
    id: int
    content: str
    special: bool


@dataclass(frozen=True)
class TokenizerBundle:
    folder: Path
    tokenizer_json: dict[str, Any] = field(repr=False)
    tokenizer_config: dict[str, Any] = field(repr=False)
    chat_templates: dict[str, str]  # name -> template; "default" is the default one
    generation_config: dict[str, Any]

    @property
    def added_tokens(self) -> tuple[AddedToken, ...]:
        return tuple(
            AddedToken(t["id"], t["content"], bool(t.get("special", False)))
            for t in self.tokenizer_json.get("added_tokens", [])
        )

    def token_id(self, content: str) -> int | None:
        for tok in self.added_tokens:
            if tok.content == content:
                return tok.id
        return self.tokenizer_json.get("model", {}).get("vocab", {}).get(content)

    def special_token(self, role: str) -> str | None:
        """bos/eos/pad/unk token string from tokenizer_config.json (str or AddedToken dict)."""
        value = self.tokenizer_config.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        return value

    @property
    def add_bos(self) -> bool:
        explicit = self.tokenizer_config.get("add_bos_token")
        if explicit is not None:
            return bool(explicit)
        # transformers 5 / fast tokenizers: the post-processor decides.
        return _post_processor_adds(self.tokenizer_json, self.special_token("bos"))

    @property
    def generation_eos_ids(self) -> tuple[int, ...]:
        eos = self.generation_config.get("eos_token_id")
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, list) else (eos,)


def load_tokenizer_bundle(folder: Path) -> TokenizerBundle:
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise SourceModelError(
            f"{folder} has no tokenizer.json.",
            hint="quantkit needs the fast tokenizer file; save the tokenizer with "
            "transformers (tokenizer.save_pretrained) to create it.",
        )
    return TokenizerBundle(
        folder=folder,
        tokenizer_json=_read_json(tok_path),
        tokenizer_config=_read_json(folder / "tokenizer_config.json", default={}),
        chat_templates=read_chat_templates(folder),
        generation_config=_read_json(folder / "generation_config.json", default={}),
    )


def read_chat_templates(folder: Path) -> dict[str, str]:
    """All chat templates of a folder, by name; later sources override earlier ones the
    way transformers 5 resolves them (a .jinja file wins over tokenizer_config.json)."""
    templates: dict[str, str] = {}
    config = _read_json(folder / "tokenizer_config.json", default={})
    templates.update(_templates_from_value(config.get("chat_template")))
    json_file = folder / "chat_template.json"
    # chat_template.json is the processor's file; tokenizers fall back to it only when
    # tokenizer_config.json has no template of its own.
    if json_file.is_file() and not templates:
        templates.update(_templates_from_value(_read_json(json_file).get("chat_template")))
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    return templates


def _templates_from_value(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {item["name"]: item["template"] for item in value}
    raise SourceModelError(
        f"chat_template has an unexpected type ({type(value).__name__}).",
        hint="It must be a string or a list of {name, template} objects.",
    )


def _post_processor_adds(tokenizer_json: dict[str, Any], bos: str | None) -> bool:
    if bos is None:
        return False
    post = tokenizer_json.get("post_processor") or {}
    processors = post.get("processors", [post])
    for proc in processors:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single", [])
            return any(p.get("SpecialToken", {}).get("id") == bos for p in single)
    return False


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise SourceModelError(f"{path} is missing.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceModelError(
            f"{path} is not valid JSON ({exc}).", hint="Restore the file from the original model."
        ) from exc


def template_turn_end(bundle: TokenizerBundle) -> str | None:
    """The token the default chat template writes after an assistant reply, where
    generation has to stop (`<|im_end|>`, `<|eot_id|>`); None without a template."""
    template = bundle.chat_templates.get("default")
    if template is None:
        return None
    specials = [t.content for t in bundle.added_tokens if t.special]
    return turn_end_token(
        template,
        specials,
        bos_token=bundle.special_token("bos") or "",
        eos_token=bundle.special_token("eos") or "",
    )
