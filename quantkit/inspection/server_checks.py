"""The round trip through `llama-server`: what users meet one level above the tokens.

They run `llama-server --jinja -m model.gguf`, send OpenAI-style chat requests with `tools`,
and expect `tool_calls` back and `<think>` text in `reasoning_content` (or printed). That
path is llama.cpp's own C++ (its Jinja engine, its differential template analysis, its
tool-call grammar and parsers), so it is checked in the real server
(quantkit.runtime.llama_server), on the artifact itself:

- `llama-server uses the artifact's template`: the server started with `--jinja` on the
  file, and `/props` reports the file's own chat templates (no fallback, the `tool_use`
  one not dropped as unparsable) and an end-of-generation token that is the template's
  turn end.
- `tool-call round trip`: the server's template analysis (logged at debug verbosity)
  finds a tool-call format with the `<tool_call>` marker; a call the model emits comes
  back as `tool_calls` with a known name and JSON arguments, finish_reason `tool_calls`;
  a `role: tool` turn is accepted and rendered; without `tools` the `<tool_call>` token
  is printed (a control token would be hidden from clients that parse the text).
- `reasoning round trip`: an opened `<think>` is printed under `--reasoning-format none`
  and, where the server's analysis finds the template's reasoning markers, moved to
  `reasoning_content` under `deepseek`; where it does not, the evidence says so.

How the model is made to emit a call (random-weight and small models do not call on
request, and `tool_choice: "required"` admits free text before the call): the assistant
turn is prefilled with `<tool_call>` and a newline (the server continues a final assistant
message), and logit biases on the turn end and `"` (+100) and `</tool_call>` (+90) make
the model close strings, the call and the turn as soon as the server's own tool-call
grammar allows. Every token after the prefill is sampled by the server under that grammar
and parsed by its parser. Tags are made to appear with a +100 bias on their token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.chat_template import LLAMA_SERVER_REASONING_PARSED
from ..formats.tokens import TokenType, TokenTypePolicy
from ..runtime.llama_server import (
    LlamaServer,
    LlamaServerError,
    ServerBinary,
    not_found_reason,
    request_timeout_for,
    startup_timeout_for,
)
from .battery import DEEP_THINKING, SEARCH_TOOL, WEATHER_TOOL
from .check import Check, skipped_check
from .gguf_checks import stored_turn_end
from .gguf_meta import GGUFMeta, gguf_files

SERVER_TEMPLATE = "llama-server uses the artifact's template"
TOOL_ROUND_TRIP = "tool-call round trip"
REASONING_ROUND_TRIP = "reasoning round trip"
NAMES = (SERVER_TEMPLATE, TOOL_ROUND_TRIP, REASONING_ROUND_TRIP)

TOOLS = [WEATHER_TOOL, SEARCH_TOOL]
TOOL_NAMES = {t["function"]["name"] for t in TOOLS}
CALL_PREFILL = "<tool_call>\n"
USER_TOOLS = {"role": "user", "content": "What is the weather in Zürich?"}
THINKING_ON = {"thinking": True, "enable_thinking": True}  # Hermes 4's and Qwen3's switches
_REASONING_KEYS = ("reasoning_mode", "reasoning_start")
_TOOL_KEYS = ("tool_mode", "supports_tools", "per_call_start")
_ANALYSIS_KEYS = _REASONING_KEYS + _TOOL_KEYS


@dataclass
class Exchange:
    """What was sent and received, for the evidence."""

    lines: list[str] = field(default_factory=list)

    def add(self, sent: str, got: Any) -> None:
        text = got if isinstance(got, str) else json.dumps(got, ensure_ascii=False)
        self.lines.append(f"{sent} -> {clip(text)}")

    def __str__(self) -> str:
        return "; ".join(self.lines)


def server_checks(
    gguf: Path,
    meta: GGUFMeta,
    binary: ServerBinary | None,
    policy: TokenTypePolicy | None = None,
) -> list[Check]:
    """The three round-trip checks on one GGUF (the first shard of a split set). Skipped,
    with the reason, when there is no llama-server; a server that cannot start fails the
    template check and skips the others. `policy`: the token types the GGUF was written
    with; a tag the user typed CONTROL on purpose (`--token-type`) must be hidden."""
    hidden = _hidden_on_purpose(policy or TokenTypePolicy())
    if binary is None:
        return [skipped_check(name, not_found_reason()) for name in NAMES]
    size = sum(f.stat().st_size for f in gguf_files(gguf))
    server = LlamaServer(
        binary, gguf, startup_timeout=startup_timeout_for(size),
        request_timeout=request_timeout_for(size),
    )  # fmt: skip
    runs = (
        (SERVER_TEMPLATE, lambda: template_check(server, meta)),
        (TOOL_ROUND_TRIP, lambda: tool_round_trip(server, meta, hidden)),
        (REASONING_ROUND_TRIP, lambda: reasoning_round_trip(server, meta, hidden)),
    )
    try:
        with server:
            return [_answered(name, run) for name, run in runs]
    except LlamaServerError as exc:
        reason = f"llama-server ({binary.origin}) did not start on this file: {exc}"
        return [
            Check(SERVER_TEMPLATE, False, clip(reason, 900)),
            *(skipped_check(name, "llama-server did not start") for name in NAMES[1:]),
        ]


def _answered(name: str, run: Callable[[], Check]) -> Check:
    """The check, or a failed one when the server stopped answering (hung or crashed)."""
    try:
        return run()
    except LlamaServerError as exc:
        return Check(name, False, str(exc))


# --- the template the server uses ---------------------------------------------------------


def template_check(server: LlamaServer, meta: GGUFMeta) -> Check:
    props = server.get("/props")
    problems = []
    stored = meta.templates.get("default")
    if stored is None:
        problems.append("the file has no chat template: the server falls back to its own")
    elif props.get("chat_template") != stored:
        problems.append("/props chat_template is not the file's (the server replaced it)")
    if "tool_use" in meta.templates and props.get("chat_template_tool_use") is None:
        why = _log_lines(server, "tool use chat template") or ["no reason logged"]
        problems.append(f"the server dropped the tool_use template: {why[-1]}")
    expected_end = stored_turn_end(meta)
    eos = props.get("eos_token")
    if expected_end is not None and eos != expected_end:
        problems.append(
            f"/props eos_token is {eos!r}, not the template's turn end {expected_end!r}: "
            "the server stops only on its end-of-generation set"
        )
    names = sorted(n for n in meta.templates if props.get(_props_key(n)) == meta.templates[n])
    ok = (
        f"llama-server {props.get('build_info', '?')} reports the file's own templates "
        f"({', '.join(names) or 'none'}) and eos_token {eos!r}, the turn end"
    )
    return Check(SERVER_TEMPLATE, not problems, "; ".join(problems) or ok)


def _props_key(name: str) -> str:
    return "chat_template" if name == "default" else f"chat_template_{name}"


# --- tool calls --------------------------------------------------------------------------


def tool_round_trip(
    server: LlamaServer, meta: GGUFMeta, hidden: frozenset[str] = frozenset()
) -> Check:
    ids = _token_ids(meta)
    if "<tool_call>" not in ids:  # not a Hermes tool-calling vocabulary (with a source, the
        # special-tokens check says whether one was lost)
        return skipped_check(TOOL_ROUND_TRIP, "the vocabulary has no <tool_call> token")
    seen = Exchange()
    problems = _call_problems(server, meta, ids, seen)
    analysis = last_analysis(server.log_text())
    if not _finds_tool_calls(analysis):
        problems.insert(0, "llama-server's template analysis finds no <tool_call> format "
                        f"({_describe(analysis, _TOOL_KEYS)}): tools are not parsed")  # fmt: skip
    problems += _tool_response_problems(server, seen)
    problems += _printed_problems(server, "<tool_call>", ids, seen, tools=True, hidden=hidden)
    how = (
        f"the call made by prefilling {CALL_PREFILL!r} and biasing the turn end, "
        "</tool_call> and '\"' so the model closes it under the server's grammar"
    )
    if problems:
        return Check(TOOL_ROUND_TRIP, False, f"{'; '.join(problems)}. Sent/received: {seen}")
    return Check(TOOL_ROUND_TRIP, True, f"{_describe(analysis, _TOOL_KEYS)}; {seen} ({how})")


def _call_problems(
    server: LlamaServer, meta: GGUFMeta, ids: dict[str, int], seen: Exchange
) -> list[str]:
    end = stored_turn_end(meta) or server.get("/props").get("eos_token") or ""
    bias = [[ids["</tool_call>"], 90]] if "</tool_call>" in ids else []
    # '"' above </tool_call>: inside a JSON string both fit, and the string must close.
    for text, value in ((end, 100), ('"', 100)):
        found = server_tokenize(server, text) if text else []
        if len(found) == 1:
            bias.append([found[0], value])
    body = {
        "messages": [USER_TOOLS, {"role": "assistant", "content": CALL_PREFILL}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 200,
        "temperature": 0,
        "logit_bias": bias,
    }
    status, reply = server.post("/v1/chat/completions", body)
    choice = first_choice(reply)
    seen.add("chat with tools", reply_summary(choice) if choice else reply)
    if status != 200 or choice is None:
        return [f"the server refused the request with tools (HTTP {status})"]
    return call_problems(choice)


def call_problems(choice: dict[str, Any]) -> list[str]:
    """What is wrong with a reply that should be one parsed tool call (llama-server's and
    vLLM's replies have the same OpenAI shape)."""
    calls = choice["message"].get("tool_calls") or []
    problems = []
    if choice.get("finish_reason") != "tool_calls":
        problems.append(f"finish_reason {choice.get('finish_reason')!r}, not 'tool_calls'")
    if not calls:
        problems.append("no tool_calls came back: the server did not parse the call")
    for call in calls:
        fn = call.get("function", {})
        if fn.get("name") not in TOOL_NAMES:
            problems.append(f"unknown function name {fn.get('name')!r}")
        try:
            if not isinstance(json.loads(fn.get("arguments", "")), dict):
                problems.append("arguments are not a JSON object")
        except ValueError:
            problems.append(f"arguments do not parse as JSON: {fn.get('arguments')!r}")
    return problems


def _finds_tool_calls(analysis: dict[str, str]) -> bool:
    return (
        analysis.get("tool_mode", "NONE") != "NONE"
        and analysis.get("supports_tools") == "true"
        and "<tool_call>" in analysis.get("per_call_start", "")
    )


def tool_response_messages() -> tuple[list[dict[str, Any]], str]:
    """A conversation ending in a `role: tool` turn, and that turn's content."""
    result = '{"temp": 21, "unit": "C"}'
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}  # fmt: skip
    messages = [
        USER_TOOLS,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    return messages, result


def _tool_response_problems(server: LlamaServer, seen: Exchange) -> list[str]:
    messages, result = tool_response_messages()
    status, rendered = server.post("/apply-template", {"messages": messages, "tools": TOOLS})
    prompt = rendered.get("prompt", "") if isinstance(rendered, dict) else ""
    seen.add("a role: tool turn", f"rendered: {result in prompt} (HTTP {status})")
    if status != 200 or result not in prompt:
        return [f"the tool response turn was not rendered (HTTP {status})"]
    body = {"messages": messages, "tools": TOOLS, "max_tokens": 1, "temperature": 0}
    status, reply = server.post("/v1/chat/completions", body)
    if status != 200:
        seen.add("chat after a tool turn", reply)
        return [f"the server refused a conversation with a tool turn (HTTP {status})"]
    return []


# --- reasoning ---------------------------------------------------------------------------


def reasoning_round_trip(
    server: LlamaServer, meta: GGUFMeta, hidden: frozenset[str] = frozenset()
) -> Check:
    ids = _token_ids(meta)
    if "<think>" not in ids:
        return skipped_check(REASONING_ROUND_TRIP, "the vocabulary has no <think> token")
    seen = Exchange()
    problems = _printed_problems(server, "<think>", ids, seen, tools=False, hidden=hidden)
    analysis = last_analysis(server.log_text())
    sees_markers = "<think>" in analysis.get("reasoning_start", "")
    deepseek = _thought(server, ids, "deepseek", seen)
    if deepseek is None:
        problems.append("the server refused the request with --reasoning-format deepseek")
    elif sees_markers:
        content, reasoning = deepseek
        if "<think>" in content or not reasoning:
            problems.append("the server's analysis finds the <think> markers but the thought "
                            "was not moved to reasoning_content")  # fmt: skip
    how = "<think> made by a +100 bias on its token, thinking switched on (thinking, " \
        "enable_thinking) with Hermes 4's reasoning system prompt"  # fmt: skip
    if problems:
        return Check(REASONING_ROUND_TRIP, False, f"{'; '.join(problems)}. Sent/received: {seen}")
    if sees_markers:
        verdict = (f"{LLAMA_SERVER_REASONING_PARSED} under --reasoning-format deepseek and "
                   "is printed in the content under none")  # fmt: skip
    else:
        verdict = (
            f"llama-server's template analysis finds no reasoning markers "
            f"({_describe(analysis, _REASONING_KEYS)}; it probes enable_thinking): the thought "
            "stays in the content under every --reasoning-format, printed; clients split "
            "<think> themselves (docs/verification.md)"
        )
    return Check(REASONING_ROUND_TRIP, True, f"{verdict}; {seen} ({how})")


def _thought(
    server: LlamaServer, ids: dict[str, int], fmt: str, seen: Exchange
) -> tuple[str, str] | None:
    status, reply = server.post("/v1/chat/completions", _think_body(ids, fmt, max_tokens=4))
    choice = first_choice(reply)
    seen.add(f"reasoning_format {fmt}", reply_summary(choice) if choice else reply)
    if status != 200 or choice is None:
        return None
    message = choice["message"]
    return message.get("content") or "", message.get("reasoning_content") or ""


def _think_body(ids: dict[str, int], fmt: str, *, max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": DEEP_THINKING},
            {"role": "user", "content": "Is 91 prime?"},
        ],
        "chat_template_kwargs": THINKING_ON,
        "reasoning_format": fmt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": [[ids["<think>"], 100]],
    }


# --- shared ------------------------------------------------------------------------------


def _printed_problems(
    server: LlamaServer,
    tag: str,
    ids: dict[str, int],
    seen: Exchange,
    *,
    tools: bool,
    hidden: frozenset[str],
) -> list[str]:
    """The tag, once the model emits it in plain chat (no `tools` in the request), must be
    printed: clients that parse tool calls or thoughts from the text depend on it. Unless
    the user typed it CONTROL on purpose (`hidden`): then it must not be."""
    if tools:
        body = {"messages": [USER_TOOLS], "max_tokens": 1, "temperature": 0,
                "logit_bias": [[ids[tag], 100]], "reasoning_format": "none"}  # fmt: skip
    else:
        body = _think_body(ids, "none", max_tokens=1)
    status, reply = server.post("/v1/chat/completions", body)
    choice = first_choice(reply)
    content = (choice or {}).get("message", {}).get("content") or ""
    seen.add(f"{tag} emitted in plain chat", repr(content))
    if status != 200 or choice is None:
        return [f"the server refused a plain chat request (HTTP {status})"]
    if tag in hidden:
        seen.add(f"{tag} typed CONTROL by --token-type", "expected hidden")
        return [] if not content.startswith(tag) else [f"{tag} was printed, not hidden"]
    if not content.startswith(tag):
        return [f"the model emitted {tag} (id {ids[tag]}) but the server printed {content!r}: "
                "the token is typed CONTROL, hidden from the text"]  # fmt: skip
    return []


def _hidden_on_purpose(policy: TokenTypePolicy) -> frozenset[str]:
    return frozenset(t for t, kind in policy.overrides.items() if kind == TokenType.CONTROL)


def last_analysis(log: str) -> dict[str, str]:
    """The last differential template analysis in the server's debug log: `tool_mode`,
    `supports_tools`, `per_call_start`, `reasoning_mode`, `reasoning_start` (empty when
    none was logged)."""
    blocks = log.split("Differential analysis complete")
    out: dict[str, str] = {}
    for block in reversed(blocks[:-1] if len(blocks) > 1 else []):
        for key in _ANALYSIS_KEYS:
            found = re.findall(rf"\b{key}: (.*)", block)
            if found:
                out[key] = found[-1].strip()
        if out:
            break
    return out


def _describe(analysis: dict[str, str], keys: tuple[str, ...]) -> str:
    if not analysis:
        return "no template analysis logged"
    # The log quotes the marker values and a marker's newline ends the line: '<tool_call>
    values = {k: analysis[k] for k in keys if k in analysis}
    return ", ".join(
        f"{k} {v.strip(chr(39))!r}" if v.startswith("'") else f"{k} {v}" for k, v in values.items()
    )


def _token_ids(meta: GGUFMeta) -> dict[str, int]:
    wanted = {"<tool_call>", "</tool_call>", "<think>", "</think>"}
    return {t: i for i, t in enumerate(meta.tokens) if t in wanted}


def server_tokenize(server: LlamaServer, text: str) -> list[int]:
    status, reply = server.post("/tokenize", {"content": text, "parse_special": True})
    return reply.get("tokens", []) if status == 200 and isinstance(reply, dict) else []


def reply_summary(choice: dict[str, Any]) -> str:
    """One reply in a line: finish_reason, the calls (without the server's random ids, so
    two runs on one file give the same evidence), the content and the thought."""
    message = choice.get("message", {})
    parts = [f"finish_reason {choice.get('finish_reason')}"]
    calls = message.get("tool_calls") or []
    if calls:
        named = [f"{c['function'].get('name')}({c['function'].get('arguments')})" for c in calls]
        parts.append("tool_calls " + ", ".join(named))
    for key in ("content", "reasoning_content", "reasoning"):  # vLLM's name: reasoning
        if message.get(key):
            parts.append(f"{key} {clip(message[key], 80)!r}")
    return ", ".join(parts)


def first_choice(reply: Any) -> dict[str, Any] | None:
    if isinstance(reply, dict) and reply.get("choices"):
        return reply["choices"][0]
    return None


def _log_lines(server: LlamaServer, needle: str) -> list[str]:
    return [ln.strip() for ln in server.log_text().splitlines() if needle in ln]


def clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
