"""The non-weight files of a safetensors artifact folder (BF16/FP16, FP8, GPTQ).

- tokenizer.json and special_tokens_map.json: byte-for-byte copies of the source's.
- tokenizer_config.json: the source's, with the chat template(s) inside it (a string when
  the source has one template, a list of {name, template} when it has several): older
  loaders such as TGI read only this file.
- chat_template.jinja and additional_chat_templates/<name>.jinja, as transformers 5 saves
  them; copied byte for byte where the source has these files.
- generation_config.json: the source's, with eos_token_id led by the chat template's turn
  end (`<|im_end|>`, `<|eot_id|>`) so generation stops where a reply ends.
- config.json: for BF16/FP16 the source's with the new dtype; llmcompressor writes its own
  (with quantization_config) for FP8/GPTQ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..source.model import SourceModel
from ..source.tokenizer_bundle import TokenizerBundle

BYTE_IDENTICAL_FILES = ("tokenizer.json", "special_tokens_map.json")
TEMPLATE_DIR = "additional_chat_templates"


def write_tokenizer_files(source: SourceModel, work: Path) -> list[Path]:
    """Copy/write everything a loader needs to tokenize and chat; returns the paths."""
    bundle = source.tokenizer
    if bundle is None:
        return []
    written = []
    for name in BYTE_IDENTICAL_FILES:
        if (source.path / name).is_file():
            written.append(Path(shutil.copyfile(source.path / name, work / name)))
    written.append(_write_tokenizer_config(source.path, bundle, work))
    written.extend(_write_template_files(source.path, bundle, work))
    written.append(write_generation_config(bundle, work))
    return written


def chat_template_value(templates: dict[str, str]) -> str | list[dict[str, str]] | None:
    """What tokenizer_config.json's chat_template holds: a string for a lone default
    template, else a list of {name, template}, default first."""
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    names = sorted(templates, key=lambda n: (n != "default", n))
    return [{"name": n, "template": templates[n]} for n in names]


def turn_end_eos_ids(bundle: TokenizerBundle) -> list[int] | None:
    """eos_token_id for generation_config.json: the template's turn end first, then the
    source's other end ids (Llama 3.1's <|end_of_text|>, <|eom_id|>) kept as stops."""
    from ..source.tokenizer_bundle import template_turn_end

    turn_end = template_turn_end(bundle)
    turn_end_id = bundle.token_id(turn_end) if turn_end else None
    if turn_end_id is None:
        return None
    return [turn_end_id, *(i for i in bundle.generation_eos_ids if i != turn_end_id)]


def write_generation_config(bundle: TokenizerBundle, work: Path) -> Path:
    from ..formats.chat_template import TemplateError

    config: dict[str, Any] = dict(bundle.generation_config)
    try:
        eos = turn_end_eos_ids(bundle)
    except TemplateError:  # the checks report the template; the source's eos is kept
        eos = None
    if eos is not None:
        config["eos_token_id"] = eos
    return _write_json(work / "generation_config.json", config)


def write_model_config(source: SourceModel, work: Path, torch_dtype: str) -> Path:
    """config.json of a plain BF16/FP16 folder: the source's, with the new dtype."""
    config = dict(source.config)
    config.pop("quantization_config", None)
    config["torch_dtype"] = torch_dtype
    if "dtype" in config or "torch_dtype" not in source.config:
        config["dtype"] = torch_dtype
    return _write_json(work / "config.json", config)


def _write_tokenizer_config(src: Path, bundle: TokenizerBundle, work: Path) -> Path:
    target = work / "tokenizer_config.json"
    value = chat_template_value(bundle.chat_templates)
    if bundle.tokenizer_config.get("chat_template") == value and (src / target.name).is_file():
        return Path(shutil.copyfile(src / target.name, target))
    config = dict(bundle.tokenizer_config)
    if value is None:
        config.pop("chat_template", None)
    else:
        config["chat_template"] = value
    return _write_json(target, config)


def _write_template_files(src: Path, bundle: TokenizerBundle, work: Path) -> list[Path]:
    written = []
    for name, template in bundle.chat_templates.items():
        relative = Path(
            "chat_template.jinja" if name == "default" else f"{TEMPLATE_DIR}/{name}.jinja"
        )
        target = work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if (src / relative).is_file():
            shutil.copyfile(src / relative, target)
        else:
            target.write_bytes(template.encode("utf-8"))
        written.append(target)
    return written


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
