"""The fixed inputs every inspection uses: a battery of conversations to render with every
chat template, and a corpus of texts to tokenize.

They cover what Hermes models depend on: system prompts (empty ones too), multi-turn
chats, a tools list, assistant tool calls, tool-role responses, `<think>` reasoning turns,
Hermes 4's `thinking=True` flag and Qwen3's `enable_thinking`, unicode and whitespace.
Fixed, so two runs (and two artifacts) are compared on exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..formats.tokens import HERMES_TAGS


@dataclass(frozen=True)
class Conversation:
    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    variables: dict[str, Any] = field(default_factory=dict)


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city <b>now</b> & later, in °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "e.g. Zürich, 東京"}},
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
# Hermes 4's documented reasoning system prompt (its model card), verbatim in substance.
DEEP_THINKING = (
    "You are a deep thinking AI, you may use extremely long chains of thought to deeply "
    "consider the problem and deliberate with yourself via systematic reasoning processes "
    "to help come to a correct solution prior to answering. You should enclose your "
    "thoughts and internal monologue inside <think> </think> tags, and then provide your "
    "solution or response to the problem."
)
_USER = {"role": "user", "content": "What is the capital of France?"}
_TOOL_CALLS = {
    "role": "assistant",
    "content": "",
    "tool_calls": [_call("get_weather", {"city": "Zürich"}), _call("search", {"q": "東京 天気"})],
}

CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation("user question", [_USER]),
    Conversation(
        "system prompt",
        [{"role": "system", "content": "You are Hermes, a helpful assistant."}, _USER],
    ),
    Conversation("empty system", [{"role": "system", "content": ""}, _USER]),
    Conversation(
        "multi-turn",
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
        ],
        add_generation_prompt=False,
    ),
    Conversation(
        "multi-turn, next reply",
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
    ),
    Conversation("tools list", [_USER], tools=[WEATHER_TOOL, SEARCH_TOOL]),
    Conversation(
        "assistant tool calls",
        [{"role": "user", "content": "Weather in Zürich? And search Tokyo weather."}, _TOOL_CALLS],
        tools=[WEATHER_TOOL, SEARCH_TOOL],
        add_generation_prompt=False,
    ),
    Conversation(
        "tool responses",
        [
            {"role": "user", "content": "Weather in Zürich? And search Tokyo weather."},
            _TOOL_CALLS,
            {"role": "tool", "content": '{"temp": 21, "unit": "°C"}'},
            {"role": "tool", "content": '{"results": ["晴れ 28°C"]}'},
            {"role": "assistant", "content": "Zürich: 21 °C. Tokyo: sunny, 28 °C."},
            {"role": "user", "content": "Thanks!"},
        ],
        tools=[WEATHER_TOOL, SEARCH_TOOL],
    ),
    Conversation(
        "think reasoning turn",
        [
            {"role": "system", "content": DEEP_THINKING},
            {"role": "user", "content": "Is 91 prime?"},
            {
                "role": "assistant",
                "content": "<think>\n91 = 7 x 13: composite.\n</think>\n\nNo: 91 = 7 × 13.",
            },
            {"role": "user", "content": "And 97?"},
        ],
    ),
    Conversation("thinking flag (Hermes 4)", [_USER], variables={"thinking": True}),
    Conversation("enable_thinking off (Qwen3)", [_USER], variables={"enable_thinking": False}),
    Conversation(
        "unicode",
        [
            {"role": "system", "content": "Réponds en français 🇫🇷"},
            {"role": "user", "content": "中文？ 😀👨‍👩‍👧 עברית Ωμέγα नमस्ते \"q\" 'x' \\b"},
            {"role": "assistant", "content": "D'accord — « oui » ✅"},
            {"role": "user", "content": "e\u0301 vs é, ﬁ, ①, \u200bzero-width"},
        ],
    ),
    Conversation(
        "whitespace and tags in content",
        [
            {"role": "user", "content": "  leading\n\n\ttabbed\n   trailing   \n"},
            {"role": "assistant", "content": "Literal tags: <tool_call> and </think> in text."},
            {"role": "user", "content": ""},
        ],
    ),
)

_CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
\ta, b = b, a + b
    return a  # O(n)

if __name__ == "__main__":
    print({k: fib(k) for k in range(10)})
'''
_JSON = '{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2, 3]}}'

# (label, text). Texts with the tags are what tool-call and reasoning parsers depend on.
CORPUS: tuple[tuple[str, str], ...] = (
    ("prose", "The quick brown fox jumps over the lazy dog. It wasn't the dog's fault."),
    ("prose, long", "In 1905, Einstein published four papers; each changed physics. " * 3),
    ("code", _CODE),
    ("json", _JSON),
    ("numbers", "3.14159 2,718,281 1234567890123 0x1F 1e-9 -42 2026-11-23 12:30:45 99%"),
    ("digits run", "123456789012345678901234567890"),
    ("unicode", "héllo wörld — 日本語のテキスト 中文 한국어 Ελληνικά русский עברית العربية"),
    ("emoji", "👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖✨"),
    ("combining", "e\u0301 n\u0303 a\u0308 \u200b\u200d ﬁ ① ㎞"),
    ("spaces", "a  b   c    d     e"),
    ("whitespace runs", "\n\n\n  \t\t  \r\n \u00a0end   "),
    ("leading space", " leading space and trailing space "),
    ("empty-ish", " "),
    ("think", "<think>\nLet me reason step by step.\n</think>\n\nThe answer is 42."),
    (
        "tool call",
        "<tool_call>\n" + _JSON + "\n</tool_call>",
    ),
    ("tool response", '<tool_response>\n{"temp": 21}\n</tool_response>'),
    ("tools", '<tools>[{"type": "function"}]</tools>'),
    ("tags adjacent", "".join(HERMES_TAGS) + " " + " ".join(HERMES_TAGS)),
    ("tags inside words", "x<think>y</think>z a<tool_call>b"),
    ("near-tags", "<think <thinking> </ think> <tool_call </tool_call > <tools/>"),
    ("chatml markers", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    (
        "llama3 markers",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    ),
)
