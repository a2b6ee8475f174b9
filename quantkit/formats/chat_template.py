"""Render chat templates the way transformers does, in a sandbox.

transformers renders templates in an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, a `tojson` filter that keeps non-ASCII, and `raise_exception` /
`strftime_now` globals. We mirror that so a template renders to the same string here as
in transformers. A template that reaches for Python internals never runs them: the
sandbox raises TemplateError for unsafe calls and, as in transformers, renders unsafe
attribute lookups as undefined (empty).

Every render runs within the limits of quantkit.formats.template_limits (RENDER_SECONDS,
RENDER_MAX_CHARS): a template that loops for ever or builds gigabytes raises
TemplateLimitError within seconds. `foreign_render` puts another library's rendering
(transformers' apply_chat_template, llama-cpp-python's formatter) under the same limits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from ..errors import QuantkitError
from .template_limits import Overrun, bounded, limited_sandbox_class

T = TypeVar("T")


class TemplateError(QuantkitError):
    """A chat template failed to render or tried to leave the sandbox."""


class TemplateLimitError(TemplateError):
    """A chat template ran past a render limit (time, size); `reason` completes "The chat
    template ..." ("did not finish rendering within 3 s")."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The chat template {reason}.",
            hint="Do not use this template: it loops for ever or builds huge text, "
            "by mistake or on purpose.",
        )
        self.reason = reason


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    **variables: Any,
) -> str:
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    def run() -> str:
        return _compile(template).render(
            messages=messages,
            tools=tools,
            documents=variables.pop("documents", None),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )

    try:
        return bounded(template, run)  # compiling too: jinja folds constants then
    except Overrun as exc:
        raise TemplateLimitError(exc.reason) from None
    except SecurityError as exc:
        raise TemplateError(
            f"The chat template tried to leave the Jinja sandbox: {exc}.",
            hint="Do not use this template; it may be malicious.",
        ) from exc
    except JinjaTemplateError as exc:
        raise TemplateError(f"The chat template failed to render: {exc}.") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError,
            RecursionError, MemoryError) as exc:  # fmt: skip
        # errors of the template's own expressions ({{ 'a' + 1 }}, {{ 1/0 }}), a macro
        # that calls itself for ever
        raise TemplateError(f"The chat template failed to render: {exc!r}.") from exc


def foreign_render(
    template: str,
    call: Callable[[], T],
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    **variables: Any,
) -> T:
    """`call()`, another library's rendering of `template` for these inputs, within the
    limits. That renderer has no size limits, so the same input is rendered here first and
    a template over a limit never reaches it (TemplateLimitError); then `call()` itself runs
    under the time limit. Other failures of quantkit's rendering are left to the other
    renderer to report in its own words."""
    try:
        render(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
               **variables)  # fmt: skip
    except TemplateLimitError:
        raise
    except TemplateError:
        pass
    try:
        return bounded(template, call)
    except Overrun as exc:
        raise TemplateLimitError(exc.reason) from None


def turn_end_token(template: str, special_tokens: list[str], **variables: Any) -> str | None:
    """The special token the template writes right after an assistant message.

    That token is where generation must stop (`<|im_end|>` for ChatML, `<|eot_id|>` for the
    Llama-3 format), whatever tokenizer_config.json calls eos.
    """
    marker = "QUANTKIT_ASSISTANT_REPLY_7f3a"
    conversation = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": marker},
    ]
    text = render(template, conversation, **variables)
    position = text.find(marker)
    if position < 0:
        return None
    tail = text[position + len(marker) :].lstrip()
    matches = [tok for tok in special_tokens if tail.startswith(tok)]
    return max(matches, key=len) if matches else None


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    raise JinjaTemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str):
    from jinja2.ext import loopcontrols

    # transformers' ImmutableSandboxedEnvironment, with the limits on sizes
    env = limited_sandbox_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


# llama-server finds a template's reasoning markers by rendering it with `enable_thinking`
# on and off (its differential analysis, common/chat-diff-analyzer.cpp); a template without
# that switch (Hermes 3's ChatML, Hermes 4's Llama-3 template, whose switch is `thinking`)
# gets none, and the server then leaves the thought in the content under every
# --reasoning-format. quantkit's `reasoning round trip` check measures it on the artifact.
LLAMA_SERVER_THINKING_SWITCH = "enable_thinking"
# How the check's evidence says the server did split the thought out (the model card reads it).
LLAMA_SERVER_REASONING_PARSED = "the thought comes back in reasoning_content"
LLAMA_SERVER_NO_REASONING = (
    "llama-server parses no reasoning for this chat template (no enable_thinking switch): "
    "the thought stays in the content under every --reasoning-format. Read <think>...</think> "
    "from the content (pass --reasoning-format none to say so), and turn thinking on with the "
    "model's reasoning system prompt or, for Hermes 4, --chat-template-kwargs "
    "'{\"thinking\": true}'."
)


def llama_server_parses_reasoning(templates: dict[str, str]) -> bool:
    return any(LLAMA_SERVER_THINKING_SWITCH in t for t in templates.values())
