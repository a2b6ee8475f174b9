"""Chat templates that never finish rendering, and the demo model carrying them: for the
render-limit tests (quantkit.formats.template_limits) of inspect and convert."""

from __future__ import annotations

import json
from pathlib import Path

from support.broken_models import linked_copy

# 10**10 empty iterations: hours without a time limit.
LOOPS = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
# The conversation written 10**10 times: memory exhausted without a size limit.
FLOODS = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{{ messages }}{% endfor %}{% endfor %}"
)


def looping_model(model: Path, dest: Path) -> Path:
    """`model` (the demo folder) copied to `dest`, weights symlinked, with LOOPS as its
    default chat template and FLOODS as its tool_use template, everywhere they are stored."""
    linked_copy(model, dest)
    templates = {"default": LOOPS, "tool_use": FLOODS}
    (dest / "chat_template.jinja").write_text(LOOPS, encoding="utf-8")
    extra = dest / "additional_chat_templates"
    if extra.is_dir():
        (extra / "tool_use.jinja").write_text(FLOODS, encoding="utf-8")
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("chat_template"), list):
        config["chat_template"] = [{"name": n, "template": t} for n, t in templates.items()]
    elif "chat_template" in config:
        config["chat_template"] = LOOPS
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return dest
