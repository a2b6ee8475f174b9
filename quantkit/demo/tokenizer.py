"""The tokenizer side of the demo model: a byte-level BPE tokenizer.json rebuilt from the
GGUF vocabulary, the Hermes tags added to it, and the Hermes chat templates.

The tokenizer is rebuilt with the `tokenizers` library from the GGUF fields rather than
with transformers' GGUF import, which names <|im_start|> as eos and writes a
SentencePiece-style decoder that llama.cpp cannot use downstream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceModelError, UnknownPreTokenizerError
from ..formats.tokens import HERMES_TAGS

log = logging.getLogger(__name__)

# llama.cpp's GPT-2 pre-tokenizer regex (llama-vocab.cpp, shared by many pre types).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order (llama-vocab.cpp).
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2_REGEX,),
    "smollm": (r"\p{N}", _GPT2_REGEX),
    "starcoder": (r"\p{N}", _GPT2_REGEX),
    "refact": (r"\p{N}", _GPT2_REGEX),
}

# GGUF token types (gguf.TokenType): 3 = CONTROL, 4 = USER_DEFINED.
_CONTROL = 3
_USER_DEFINED = 4

TURN_END = "<|im_end|>"

DEFAULT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_TOOL_SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures "
    "within <tools></tools> XML tags. You may call one or more functions to assist with "
    "the user query. Don't make assumptions about what values to plug into functions. "
    "Here are the available tools: <tools>"
)
_TOOL_CALL_INSTRUCTIONS = (
    "\\n</tools>\\nFor each function call return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags as follows:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-dict>}\\n</tool_call>'
)

TOOL_USE_TEMPLATE = (
    "{%- macro tool_call_json(call) -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{%- set args = fn.arguments if fn.arguments is string else (fn.arguments | tojson) -%}"
    "{{- '{\"name\": \"' + fn.name + '\", \"arguments\": ' + args + '}' -}}"
    "{%- endmacro -%}"
    "{{- '<|im_start|>system\\n' }}"
    f'{{{{- "{_TOOL_SYSTEM_PROMPT}" }}}}'
    "{%- for tool in tools or [] %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    f'{{{{- "{_TOOL_CALL_INSTRUCTIONS}" }}}}'
    "{{- '<|im_end|>\\n' }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}"
    "{{- '<|im_start|>tool\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- if not loop.first or message.content %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n' + tool_call_json(call) + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer fields of a GGUF file, as plain Python values."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool


@dataclass(frozen=True)
class BuiltTokenizer:
    tokenizer: Any  # tokenizers.Tokenizer
    new_token_ids: tuple[int, ...]  # ids of the appended Hermes tags, in order


def read_gguf_vocab(reader: Any) -> GgufVocab:
    """Read the tokenizer fields of an open gguf.GGUFReader."""
    from gguf import Keys

    def field(name: str, default: Any = None) -> Any:
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    model = field(Keys.Tokenizer.MODEL)
    if model != "gpt2":
        raise SourceModelError(
            f"The GGUF tokenizer model is {model!r}; the demo builder only handles byte-level "
            "BPE ('gpt2').",
            hint="Use a GGUF with a byte-level BPE vocabulary.",
        )
    return GgufVocab(
        tokens=tuple(field(Keys.Tokenizer.LIST)),
        token_types=tuple(int(t) for t in field(Keys.Tokenizer.TOKEN_TYPE)),
        merges=tuple(field(Keys.Tokenizer.MERGES)),
        pre=str(field(Keys.Tokenizer.PRE, "default")),
        bos_id=field(Keys.Tokenizer.BOS_ID),
        eos_id=field(Keys.Tokenizer.EOS_ID),
        pad_id=field(Keys.Tokenizer.PAD_ID),
        unk_id=field(Keys.Tokenizer.UNK_ID),
        add_bos=bool(field(Keys.Tokenizer.ADD_BOS, False)),
    )


def build_tokenizer(vocab: GgufVocab, new_tags: Sequence[str] = HERMES_TAGS) -> BuiltTokenizer:
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's tokenizer for this vocabulary,
    with `new_tags` appended as added (non-special) tokens."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    regexes = PRE_TOKENIZER_REGEXES.get(vocab.pre)
    if regexes is None:
        raise UnknownPreTokenizerError(
            f"GGUF pre-tokenizer {vocab.pre!r} has no known regex here.",
            hint=f"Known: {', '.join(sorted(PRE_TOKENIZER_REGEXES))}.",
        )
    bpe = models.BPE(
        vocab={tok: i for i, tok in enumerate(vocab.tokens)},
        merges=[tuple(m.split(" ", 1)) for m in vocab.merges],
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = _post_processor(vocab, processors)

    kept = [
        AddedToken(t, special=(kind == _CONTROL), normalized=False)
        for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tok.add_tokens(kept)
    clashes = [t for t in new_tags if tok.token_to_id(t) is not None]
    if clashes:
        raise SourceModelError(f"The GGUF vocabulary already holds {clashes}.")
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in new_tags])
    new_ids = tuple(tok.token_to_id(t) for t in new_tags)
    expected = tuple(range(len(vocab.tokens), len(vocab.tokens) + len(new_tags)))
    if new_ids != expected:
        raise SourceModelError(f"Hermes tags got ids {new_ids}, expected {expected}.")
    return BuiltTokenizer(tok, new_ids)


def _post_processor(vocab: GgufVocab, processors: Any) -> Any:
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        return processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab.bos_id)],
        )
    return processors.ByteLevel(trim_offsets=False)


def write_tokenizer_files(
    out_dir: Path, vocab: GgufVocab, built: BuiltTokenizer, model_max_length: int
) -> None:
    """tokenizer.json, tokenizer_config.json, chat_template.jinja and
    additional_chat_templates/tool_use.jinja (where transformers 5 looks for named
    templates once chat_template.jinja exists)."""
    built.tokenizer.save(str(out_dir / "tokenizer.json"))
    config = tokenizer_config(vocab, built, model_max_length)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "chat_template.jinja").write_text(DEFAULT_TEMPLATE, encoding="utf-8")
    extra = out_dir / "additional_chat_templates"
    extra.mkdir(exist_ok=True)
    (extra / "tool_use.jinja").write_text(TOOL_USE_TEMPLATE, encoding="utf-8")


def tokenizer_config(
    vocab: GgufVocab, built: BuiltTokenizer, model_max_length: int
) -> dict[str, Any]:
    def name(token_id: int | None) -> str | None:
        return None if token_id is None else vocab.tokens[token_id]

    added = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(built.tokenizer.get_added_tokens_decoder().items())
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": name(vocab.bos_id),
        "eos_token": TURN_END,
        "pad_token": name(vocab.pad_id),
        "unk_token": name(vocab.unk_id),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": [
            {"name": "default", "template": DEFAULT_TEMPLATE},
            {"name": "tool_use", "template": TOOL_USE_TEMPLATE},
        ],
    }


def generation_config(vocab: GgufVocab, turn_end_id: int) -> dict[str, Any]:
    return {
        "bos_token_id": vocab.bos_id,
        "eos_token_id": [turn_end_id],
        "pad_token_id": vocab.pad_id,
        "do_sample": False,
    }
