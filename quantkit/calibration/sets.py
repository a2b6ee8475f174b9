"""Calibration sets: chat-formatted token sequences for the schemes that need data
(GPTQ, static FP8, a GGUF importance matrix).

Three sources, one spec string:

- ``None`` or ``"builtin"``: the mix shipped in ``quantkit/data/calibration/`` (prose, code,
  math, multi-turn chat, ``<think>`` reasoning, tool calls), written for quantkit;
- a ``.jsonl`` file with ``{"messages": [...]}`` (optionally ``"tools"``) or ``{"text": ...}``
  lines;
- ``"hf:NAME[:CONFIG]:SPLIT"``: a Hugging Face dataset (a Hub id or a local folder) with a
  ``messages`` or ``text`` column.

Chat samples are rendered with the model's own chat template (tool samples with its
``tool_use`` variant when it has one), tokenized with the model's tokenizer.json without
special tokens, and get a BOS only where the model adds one and the rendered text does
not already start with it: never two BOS. Selection is deterministic for a seed.

A model without a chat template (a base model) cannot render chat samples; GPTQ and FP8
refuse them. An importance matrix, like llama-imatrix, takes plain text, so for it
(``chat_as_text=True``) each chat sample becomes the contents of its messages joined by
blank lines, with no chat markup, and the set says so (``rendering: plain text``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import require
from ..formats.chat_template import TemplateError, render
from ..source.tokenizer_bundle import TokenizerBundle
from .records import (
    KINDS,
    CalibrationError,
    Records,
    builtin_records,
    hf_records,
    jsonl_records,
    kind_of,
)

log = logging.getLogger(__name__)

BUILTIN = "builtin"
MIN_SEQ_LEN = 16
_NO_TEMPLATE_HINT = 'Pass --calibration FILE with {"text": ...} lines (plain text).'
PLAIN_TEXT = "plain text (no chat template)"


@dataclass(frozen=True)
class CalibrationSet:
    samples: tuple[tuple[int, ...], ...]  # token ids, BOS included where the model adds one
    kinds: tuple[str, ...]  # per sample, one of KINDS
    source: str  # "builtin", the JSONL path, or the hf: spec
    seed: int
    seq_len: int = 0
    plain_text: bool = False  # chat samples joined as plain text (no chat template)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.samples)

    def to_hf_dataset(self) -> Any:
        """A ``datasets.Dataset`` with ``input_ids`` and ``attention_mask``, what
        llmcompressor's ``oneshot(dataset=...)`` takes already tokenized."""
        datasets = require("datasets", "compress")
        return datasets.Dataset.from_dict(
            {
                "input_ids": [list(s) for s in self.samples],
                "attention_mask": [[1] * len(s) for s in self.samples],
            }
        )

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the calibration data."""
        counts = Counter(self.kinds)
        described = {
            "source": self.source,
            "seed": self.seed,
            "samples": len(self.samples),
            "seq_len": self.seq_len,
            "tokens": self.tokens,
            "max_tokens": max((len(s) for s in self.samples), default=0),
            "kinds": {kind: counts[kind] for kind in KINDS if counts[kind]},
        }
        if self.plain_text:
            described["rendering"] = PLAIN_TEXT
        return described


def load_calibration(
    spec: str | None,
    bundle: TokenizerBundle,
    *,
    samples: int = 256,
    seq_len: int = 2048,
    seed: int = 0,
    think_share: float | None = None,
    tool_share: float | None = None,
    chat_as_text: bool = False,
) -> CalibrationSet:
    """Read, select, render and tokenize a calibration set (no model weights involved).

    ``think_share`` / ``tool_share``: the fraction of samples that must be ``<think>``
    reasoning / tool-call samples; None keeps the source's natural share (a random draw).
    ``chat_as_text``: a model without a chat template gets chat samples as plain text
    (an importance matrix) instead of an error (GPTQ, FP8).
    """
    _check_options(samples, seq_len, think_share, tool_share)
    plain = chat_as_text and not bundle.chat_templates
    if spec is None or spec == BUILTIN:
        if not bundle.chat_templates and not plain:
            raise CalibrationError(
                f"The built-in calibration mix is chat samples; they need a chat template "
                f"and {bundle.folder} has none.",
                hint=_NO_TEMPLATE_HINT,
            )
        records, source = builtin_records(), BUILTIN
    elif spec.startswith("hf:"):
        records, source = hf_records(spec), spec
    else:
        records, source = jsonl_records(Path(spec)), spec

    if records.has_chat and not bundle.chat_templates and not plain:
        raise CalibrationError(
            f"{source} has chat samples; they need a chat template and {bundle.folder} has none.",
            hint=_NO_TEMPLATE_HINT,
        )
    quota: dict[str, int] = {}
    for kind, share in (("think", think_share), ("tool", tool_share)):
        if share is not None:  # rounded, never more than the samples left
            quota[kind] = min(round(samples * share), samples - sum(quota.values()))
    encoder = _Encoder(bundle, seq_len, plain_text=plain)
    # A built-in sample this model's template refuses (say, parallel tool calls) is
    # skipped; the user's own data must render, or they should hear which line fails.
    chosen = _select(records, samples, quota, seed, source, encoder.encode, source == BUILTIN)
    result = CalibrationSet(
        tuple(ids for ids, _ in chosen),
        tuple(k for _, k in chosen),
        source,
        seed,
        seq_len,
        plain_text=plain and records.has_chat,
    )
    log.info("calibration: %s", result.describe())
    return result


# --- options and selection ---------------------------------------------------------------


def _check_options(
    samples: int, seq_len: int, think_share: float | None, tool_share: float | None
) -> None:
    if samples < 1:
        raise CalibrationError(f"--calibration-samples must be at least 1 (got {samples}).")
    if seq_len < MIN_SEQ_LEN:
        raise CalibrationError(
            f"--calibration-seq-len must be at least {MIN_SEQ_LEN} tokens (got {seq_len})."
        )
    for name, share in (("think", think_share), ("tool", tool_share)):
        if share is not None and not 0.0 <= share <= 1.0:
            raise CalibrationError(f"The {name} share must be between 0 and 1 (got {share}).")
    if (think_share or 0.0) + (tool_share or 0.0) > 1.0:
        raise CalibrationError(
            f"The think share ({think_share}) and tool share ({tool_share}) add up to more than 1."
        )


def _select(
    records: Records,
    samples: int,
    quota: dict[str, int],
    seed: int,
    source: str,
    encode: Callable[[dict[str, Any], str, str], tuple[int, ...]],
    skip_unrenderable: bool,
) -> list[tuple[tuple[int, ...], str]]:
    """Walk the records in a seeded random order; take think/tool samples up to their
    quota and the others up to the rest, encoding each one taken. The walk order is the
    sample order; records past the last one taken are never read."""
    rng = random.Random(seed)
    order = list(range(records.size))
    rng.shuffle(order)
    rest = samples - sum(quota.values())
    taken: Counter[str] = Counter()
    rest_taken = skipped = 0
    chosen: list[tuple[tuple[int, ...], str]] = []
    for index in order:
        if len(chosen) == samples:
            break
        record, where = records.get(index), records.where(index)
        kind = kind_of(record, where)
        full = taken[kind] >= quota[kind] if kind in quota else rest_taken >= rest
        if full:
            continue
        try:
            ids = encode(record, kind, where)
        except _RenderError as exc:
            if not skip_unrenderable:
                raise
            log.warning("calibration: skipped %s", exc)
            skipped += 1
            continue
        if kind in quota:
            taken[kind] += 1
        else:
            rest_taken += 1
        chosen.append((ids, kind))
    if len(chosen) < samples:
        message, hint = _shortfall(source, records.size - skipped, samples, quota, taken, rest)
        if skipped:
            message += f" ({skipped} samples did not render with this chat template.)"
        raise CalibrationError(message, hint=hint)
    return chosen


def _shortfall(
    source: str, size: int, samples: int, quota: dict[str, int], taken: Counter[str], rest: int
) -> tuple[str, str | None]:
    if size < samples:
        return (
            f"{samples} calibration samples were asked for but {source} has only {size}.",
            f"Pass --calibration-samples {size} or fewer.",
        )
    missing = [
        f"{quota[k]} {k} samples ({quota[k] / samples:.0%} of {samples}) but {source} has "
        f"only {taken[k]}"
        for k in quota
        if taken[k] < quota[k]
    ]
    if not missing:
        missing = [f"{rest} samples of other kinds but {source} has too few"]
    return f"The requested calibration shares cannot be met: {'; '.join(missing)}.", None


# --- rendering and tokenizing --------------------------------------------------------------


class _RenderError(CalibrationError):
    """One sample does not render with the model's chat template."""


class _Encoder:
    def __init__(self, bundle: TokenizerBundle, seq_len: int, *, plain_text: bool = False) -> None:
        from tokenizers import Tokenizer

        self.bundle = bundle
        self.seq_len = seq_len
        self.plain_text = plain_text
        self.tokenizer = Tokenizer.from_file(str(bundle.folder / "tokenizer.json"))
        bos = bundle.special_token("bos")
        self.bos_token = bos or ""
        self.bos_id = bundle.token_id(bos) if bos else None
        self.add_bos = bundle.add_bos and self.bos_id is not None
        self.variables = {"bos_token": self.bos_token, "eos_token": bundle.special_token("eos")}

    def encode(self, record: dict[str, Any], kind: str, where: str) -> tuple[int, ...]:
        text = record["text"] if "messages" not in record else self.render(record, kind, where)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        # The one BOS rule: add it where the model adds one, unless the text (a template
        # that writes bos_token itself) already starts with it.
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return tuple(ids[: self.seq_len])

    def render(self, record: dict[str, Any], kind: str, where: str) -> str:
        templates = self.bundle.chat_templates
        if self.plain_text:
            return as_plain_text(record["messages"])
        if "default" not in templates and "tool_use" not in templates:
            raise CalibrationError(
                f"Chat calibration samples ({where}) need a chat template and "
                f"{self.bundle.folder} has none.",
                hint=_NO_TEMPLATE_HINT,
            )
        messages = record["messages"]
        tools = record.get("tools") or None
        use_tools = kind == "tool" and "tool_use" in templates
        template = templates["tool_use"] if use_tools else templates.get("default")
        template = template or templates["tool_use"]
        try:
            text = render(template, messages, tools=tools, **self.variables)
            if _has_tool_calls(messages) and "<tool_call>" not in text:
                # A template that ignores tool_calls: write them the Hermes way in the text.
                text = render(template, _inline_tool_calls(messages), tools=tools, **self.variables)
        except TemplateError as exc:
            raise _RenderError(f"{where} does not render with the chat template: {exc}") from exc
        return text


def as_plain_text(messages: Sequence[dict[str, Any]]) -> str:
    """A chat sample without chat markup: its messages' contents (tool calls written the
    Hermes way, as JSON in <tool_call> tags) joined by blank lines."""
    parts = (str(m.get("content") or "").strip() for m in _inline_tool_calls(messages))
    return "\n\n".join(part for part in parts if part)


def _has_tool_calls(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") for m in messages)


def _inline_tool_calls(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None) or []
        parts = [message.get("content") or ""] if message.get("content") else []
        for call in calls:
            fn = call.get("function", call)
            args = fn.get("arguments")
            if isinstance(args, str):
                with contextlib.suppress(json.JSONDecodeError):  # else keep it as written
                    args = json.loads(args)
            body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
            parts.append(f"<tool_call>\n{body}\n</tool_call>")
        if calls:
            message["content"] = "\n".join(parts)
        if message.get("role") == "tool" and "<tool_response>" not in str(message.get("content")):
            message["content"] = f"<tool_response>\n{message.get('content')}\n</tool_response>"
        out.append(message)
    return out
