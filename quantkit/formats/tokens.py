"""The special tokens quantkit protects, and the GGUF token-type policy (docs/formats.md).

Turn markers and other special added tokens are CONTROL, so runtimes hide them and stop on
them; the Hermes reasoning and tool tags are USER_DEFINED, so runtimes print them and
tool-call parsers see them, whatever the source tokenizer marks them as.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum

from ..errors import QuantkitError

# The tags Hermes 3 / Hermes 4 use for tools and reasoning, in the order the demo model
# adds them. Runtimes must print them (tool-call parsers read them), so they are never
# hidden control tokens.
HERMES_TAGS: tuple[str, ...] = (
    "<tools>",
    "</tools>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


class TokenType(IntEnum):
    """llama.cpp's token types (gguf.TokenType), restated so the policy reads plainly."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class TokenTypePolicy:
    """Which added tokens get which llama.cpp type. `overrides` wins over everything."""

    user_defined: frozenset[str] = frozenset(HERMES_TAGS)
    overrides: Mapping[str, TokenType] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, str]) -> TokenTypePolicy:
        parsed: dict[str, TokenType] = dict(self.overrides)
        for token, kind in overrides.items():
            try:
                parsed[token] = TokenType[kind.upper()]
            except KeyError as exc:
                raise QuantkitError(
                    f"Unknown token type {kind!r} for {token!r}.",
                    hint="Use control, user_defined or normal.",
                ) from exc
        return replace(self, overrides=parsed)

    def type_of(self, content: str, special: bool) -> TokenType:
        if content in self.overrides:
            return self.overrides[content]
        if content in self.user_defined:
            return TokenType.USER_DEFINED
        if special or looks_like_control(content):
            return TokenType.CONTROL
        return TokenType.USER_DEFINED


def looks_like_control(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or (
        text.startswith("<｜") and text.endswith("｜>")
    )
