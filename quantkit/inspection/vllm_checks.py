"""The round trip through vLLM's OpenAI server, for safetensors artifacts (BF16, FP8, GPTQ):
`vllm serve DIR --enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser
deepseek_r1` (quantkit.runtime.vllm_server), where vLLM and a CUDA GPU are present; each
check is skipped with the reason elsewhere, never passed.

- `vLLM renders the artifact's template`: the prompt vLLM builds for a chat with tools (its
  /tokenize endpoint, which renders as chat completions do) is token for token the one the
  folder's own template gives through transformers (what the other checks compare), and
  it names every tool.
- `tool-call round trip (vLLM)`: a call the model emits comes back as `tool_calls` with a
  known name and JSON arguments, finish_reason `tool_calls`; a `role: tool` turn is
  rendered and accepted.
- `reasoning round trip (vLLM)`: an emitted `<think>` is moved to the reply's reasoning
  field by the reasoning parser, not left in the content.

How the model is made to call (small and random-weight models do not call on request, and
vLLM's `tool_choice: "required"` bypasses the hermes parser: it decodes a JSON list
instead): the request keeps `tool_choice: "auto"` and adds vLLM's `structured_outputs`
regex of a Hermes call, `<tool_call>` + `{"name": ..., "arguments": {...}}` + `</tool_call>`,
one alternative per tool. The model samples the name and the argument under that grammar
in vLLM's own sampler, and vLLM's hermes parser finds the call in the decoded text (with
special tokens kept, as the parser asks for when tools are given). `<think>` is made to
appear with a +100 logit bias on its token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime.vllm_server import (
    REASONING_PARSER,
    SERVED_NAME,
    VllmServer,
    VllmServerError,
    find_vllm,
)
from .battery import DEEP_THINKING
from .check import Check, skipped_check
from .server_checks import (
    THINKING_ON,
    TOOLS,
    USER_TOOLS,
    Exchange,
    call_problems,
    clip,
    first_choice,
    reply_summary,
    tool_response_messages,
)

VLLM_TEMPLATE = "vLLM renders the artifact's template"
VLLM_TOOLS = "tool-call round trip (vLLM)"
VLLM_REASONING = "reasoning round trip (vLLM)"
NAMES = (VLLM_TEMPLATE, VLLM_TOOLS, VLLM_REASONING)


def vllm_checks(folder: Path) -> list[Check]:
    """The three checks on one safetensors folder; skipped with the reason when vLLM or a
    GPU is missing. A server that cannot start fails the first and skips the others."""
    runtime, why = find_vllm()
    if runtime is None:
        return [skipped_check(name, why) for name in NAMES]
    try:
        reasoning = _has_think_tags(folder)
    except Exception as exc:  # noqa: BLE001 - the failure is the evidence
        return _not_started(f"transformers cannot load the folder's tokenizer: {exc}")
    server = VllmServer(folder, reasoning=reasoning)
    runs = (
        (VLLM_TEMPLATE, lambda: template_check(server, folder)),
        (VLLM_TOOLS, lambda: tool_round_trip(server)),
        (VLLM_REASONING, lambda: reasoning_round_trip(server)),
    )
    try:
        with server:
            return [_answered(name, run) for name, run in runs]
    except VllmServerError as exc:
        return _not_started(f"vLLM {runtime.version} did not start on this folder: {exc}")


def _not_started(reason: str) -> list[Check]:
    return [
        Check(VLLM_TEMPLATE, False, clip(reason, 900)),
        *(skipped_check(name, "vLLM did not start") for name in NAMES[1:]),
    ]


def _has_think_tags(folder: Path) -> bool:
    """vLLM's reasoning parsers refuse to start on a vocabulary without both tags."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    return "<think>" in vocab and "</think>" in vocab


def _answered(name: str, run: Callable[[], Check]) -> Check:
    """The check, or a failed one when the server stopped answering or the folder's own
    template does not render in transformers."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - the failure is the evidence
        return Check(name, False, clip(f"{type(exc).__name__}: {exc}", 900))


# --- the template ------------------------------------------------------------------------


def template_check(server: VllmServer, folder: Path) -> Check:
    messages = [USER_TOOLS]
    served = _rendered_ids(server, messages, tools=TOOLS)
    if served is None:
        return Check(VLLM_TEMPLATE, False, "vLLM refused to render a chat with tools")
    own = _own_ids(folder, messages, TOOLS)
    problems = []
    if served != own:
        at = next((i for i, (a, b) in enumerate(zip(served, own, strict=False)) if a != b),
                  min(len(served), len(own)))  # fmt: skip
        problems.append(
            f"vLLM's prompt differs from the folder's template at token {at} "
            f"({len(served)} vs {len(own)} tokens): vLLM renders another template"
        )
    text = _detokenize(server, served)
    missing = [t["function"]["name"] for t in TOOLS if t["function"]["name"] not in text]
    if missing:
        problems.append(f"the prompt vLLM rendered does not name the tools {missing}: the "
                        "template it uses drops them")  # fmt: skip
    if problems:
        return Check(VLLM_TEMPLATE, False, "; ".join(problems))
    return Check(VLLM_TEMPLATE, True, f"vLLM's prompt for a chat with tools is the folder's "
                 f"own rendering ({len(served)} tokens) and names every tool")  # fmt: skip


def _own_ids(folder: Path, messages: list[dict], tools: list[dict]) -> list[int]:
    """The folder's template through transformers (its `tool_use` template when it has one
    and tools are given, as vLLM chooses), encoded without added specials."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = tokenizer.apply_chat_template(
        copy.deepcopy(messages), tools=copy.deepcopy(tools), tokenize=False,
        add_generation_prompt=True,
    )  # fmt: skip
    return list(tokenizer.encode(text, add_special_tokens=False))


def _rendered_ids(
    server: VllmServer, messages: list[dict], *, tools: list[dict] | None = None
) -> list[int] | None:
    body: dict[str, Any] = {"model": SERVED_NAME, "messages": messages}
    if tools:
        body["tools"] = tools
    status, reply = server.post("/tokenize", body)
    return reply.get("tokens") if status == 200 and isinstance(reply, dict) else None


def _detokenize(server: VllmServer, ids: list[int]) -> str:
    status, reply = server.post("/detokenize", {"model": SERVED_NAME, "tokens": ids})
    return reply.get("prompt", "") if status == 200 and isinstance(reply, dict) else ""


def _single_token(server: VllmServer, text: str) -> int | None:
    body = {"model": SERVED_NAME, "prompt": text, "add_special_tokens": False}
    status, reply = server.post("/tokenize", body)
    tokens = reply.get("tokens", []) if status == 200 and isinstance(reply, dict) else []
    return tokens[0] if len(tokens) == 1 else None


# --- tool calls --------------------------------------------------------------------------


def call_regex(tools: list[dict]) -> str:
    """A Hermes call of any of `tools`, each with its first parameter a short string."""
    calls = []
    for tool in tools:
        fn = tool["function"]
        first = next(iter(fn["parameters"]["properties"]))
        head = _literal(f'{{"name": "{fn["name"]}", "arguments": {{"{first}": "')
        calls.append(head + "[A-Za-z ]{1,16}" + _literal('"}}'))
    return "<tool_call>\n(" + "|".join(calls) + ")\n</tool_call>"


def _literal(text: str) -> str:
    """`text` as a regex: metacharacters escaped, spaces and quotes left as they are (the
    grammar engines' regex dialects do not all take Python's `\\ `)."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


def tool_round_trip(server: VllmServer) -> Check:
    seen = Exchange()
    problems = [
        f"{tag} is not one token in vLLM's tokenizer: the hermes parser cannot start"
        for tag in ("<tool_call>", "</tool_call>")
        if _single_token(server, tag) is None
    ]
    body = {
        "model": SERVED_NAME,
        "messages": [USER_TOOLS],
        "tools": TOOLS,
        "tool_choice": "auto",
        "max_tokens": 200,
        "temperature": 0,
        "structured_outputs": {"regex": call_regex(TOOLS)},
    }
    end_think = _single_token(server, "</think>") if server.reasoning else None
    if end_think is not None:
        # vLLM applies the grammar once the reasoning parser sees the thought end: the
        # model first closes an empty thought, as Hermes 4 does before a call.
        body["logit_bias"] = {str(end_think): 100}
    status, reply = server.post("/v1/chat/completions", body)
    choice = first_choice(reply)
    seen.add("chat with tools", reply_summary(choice) if choice else reply)
    if status != 200 or choice is None:
        problems.append(f"vLLM refused the request with tools (HTTP {status})")
    else:
        problems += call_problems(choice)
    problems += _tool_response_problems(server, seen)
    how = "the call sampled under vLLM's structured_outputs regex of a Hermes call"
    if problems:
        return Check(VLLM_TOOLS, False, f"{'; '.join(problems)}. Sent/received: {seen}")
    return Check(VLLM_TOOLS, True, f"{seen} ({how})")


def _tool_response_problems(server: VllmServer, seen: Exchange) -> list[str]:
    messages, result = tool_response_messages()
    ids = _rendered_ids(server, messages, tools=TOOLS)
    rendered = result in _detokenize(server, ids) if ids else False
    seen.add("a role: tool turn", f"rendered: {rendered}")
    if not rendered:
        return ["the tool response turn was not rendered"]
    body = {"model": SERVED_NAME, "messages": messages, "tools": TOOLS, "max_tokens": 1,
            "temperature": 0}  # fmt: skip
    status, reply = server.post("/v1/chat/completions", body)
    if status != 200:
        seen.add("chat after a tool turn", reply)
        return [f"vLLM refused a conversation with a tool turn (HTTP {status})"]
    return []


# --- reasoning ---------------------------------------------------------------------------


def reasoning_round_trip(server: VllmServer) -> Check:
    if not server.reasoning:
        return skipped_check(VLLM_REASONING, "the vocabulary has no <think> and </think> tokens")
    think = _single_token(server, "<think>")
    if think is None:
        return Check(VLLM_REASONING, False, "<think> is not one token in vLLM's tokenizer")
    seen = Exchange()
    body = {
        "model": SERVED_NAME,
        "messages": [
            {"role": "system", "content": DEEP_THINKING},
            {"role": "user", "content": "Is 91 prime?"},
        ],
        "chat_template_kwargs": THINKING_ON,
        "max_tokens": 4,
        "temperature": 0,
        "logit_bias": {str(think): 100},
    }
    status, reply = server.post("/v1/chat/completions", body)
    choice = first_choice(reply)
    sent = f"chat, reasoning parser {REASONING_PARSER}"
    seen.add(sent, reply_summary(choice) if choice else reply)
    if status != 200 or choice is None:
        return Check(VLLM_REASONING, False, f"vLLM refused the request (HTTP {status}): {seen}")
    message = choice["message"]
    # vLLM names the field `reasoning`; older releases `reasoning_content`.
    thought = message.get("reasoning") or message.get("reasoning_content") or ""
    content = message.get("content") or ""
    if not thought and not content:
        shown = _with_special_tokens(server, body, seen)
        why = (
            f"vLLM returned no text: <think> is a special token and vLLM skips special tokens "
            f"unless asked ({shown}), so a thought is never closed and the whole reply counts "
            "as reasoning"
        )
        return Check(VLLM_REASONING, False, f"{why}. Sent/received: {seen}")
    if "<think>" in content or not thought:
        return Check(VLLM_REASONING, False, f"the thought was not moved out of the content by "
                     f"--reasoning-parser {REASONING_PARSER}: {seen}")  # fmt: skip
    how = "<think> made by a +100 bias on its token, thinking switched on"
    return Check(VLLM_REASONING, True, f"the thought comes back in the reasoning field; "
                 f"{seen} ({how})")  # fmt: skip


def _with_special_tokens(server: VllmServer, body: dict[str, Any], seen: Exchange) -> str:
    status, reply = server.post("/v1/chat/completions", {**body, "skip_special_tokens": False})
    choice = first_choice(reply)
    seen.add("the same with skip_special_tokens false", reply_summary(choice) if choice else reply)
    return "with skip_special_tokens false it is returned" if choice else f"HTTP {status}"
