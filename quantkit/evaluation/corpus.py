"""The evaluation corpus: documents -> one token stream with span labels.

A corpus is a list of documents. Prose and code are plain text; a chat sample is a list of
messages (and optional tools) that is rendered with the model's own chat template. Every
token of the stream carries a bit mask saying whether it lies inside assistant content,
inside `<think>...</think>` (reasoning) or inside `<tool_call>...</tool_call>`, so quality
can be reported on the parts of a chat that users care most about.

Corpus files:
- `*.txt`: documents separated by a line holding exactly `%%`; a file without such a line is
  one document, tokenized as it is (so a plain text file is llama.cpp's perplexity stream).
- `*.jsonl`: one document per line, `{"text": ...}` or `{"messages": [...], "tools": [...]}`.
- a folder: its `*.txt` and `*.jsonl` files, documents interleaved file by file.

The shipped corpus (quantkit/data/eval) was written for quantkit and is not part of the
calibration mix; see its README.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from ..errors import QuantkitError

ASSISTANT, REASONING, TOOL_CALL = 1, 2, 4
SPAN_NAMES = {"assistant": ASSISTANT, "reasoning": REASONING, "tool_call": TOOL_CALL}
_DOC_SEPARATOR = re.compile(r"^%%[ \t]*(?:\n|\Z)", re.MULTILINE)
_TAG_SPANS = ((REASONING, "<think>", "</think>"), (TOOL_CALL, "<tool_call>", "</tool_call>"))


class CorpusError(QuantkitError):
    """The evaluation corpus cannot be read or is too short."""


@dataclass(frozen=True)
class Document:
    kind: str  # "text" or "chat"
    text: str = ""
    messages: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: tuple[Document, ...]
    sha256: str  # over the files' bytes, for the reference-logits cache key

    @property
    def chat_samples(self) -> int:
        return sum(doc.kind == "chat" for doc in self.documents)


class Tokenizer(Protocol):
    """What an engine offers for building the stream (see quantkit.evaluation.engines)."""

    add_bos: bool
    bos_id: int | None
    bos_text: str

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of `text` (special tokens matched, no BOS) and each token's start
        offset in characters."""
        ...

    def chat_template(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class TokenStream:
    ids: tuple[int, ...] = field(repr=False)
    labels: tuple[int, ...] = field(repr=False)  # bit mask per token (ASSISTANT | ...)


def default_corpus_dir() -> Path:
    return Path(str(resources.files("quantkit") / "data" / "eval")).resolve()


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The shipped corpus (None), or a user's .txt / .jsonl file or folder of them."""
    folder = default_corpus_dir() if path is None else Path(path).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in (".txt", ".jsonl"))
        name = "quantkit-eval" if path is None else str(folder)
    elif folder.is_file():
        files, name = [folder], str(folder)
    else:
        raise CorpusError(f"Corpus {folder} does not exist.", hint="Pass a .txt or .jsonl file.")
    if not files:
        raise CorpusError(f"{folder} holds no .txt or .jsonl files.")
    digest = hashlib.sha256()
    per_file = []
    for file in files:
        data = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + data)
        per_file.append(_read_documents(file, data.decode("utf-8")))
    return Corpus(name, tuple(_interleave(per_file)), digest.hexdigest())


def _read_documents(file: Path, text: str) -> list[Document]:
    if file.suffix == ".txt":
        parts = _DOC_SEPARATOR.split(text)
        return [Document("text", part) for part in parts if part.strip()]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{file}:{number} is not valid JSON ({exc}).") from exc
        if isinstance(item, dict) and isinstance(item.get("messages"), list):
            docs.append(
                Document(
                    "chat", messages=tuple(item["messages"]), tools=tuple(item.get("tools") or ())
                )
            )
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            docs.append(Document("text", item["text"]))
        else:
            raise CorpusError(
                f"{file}:{number}: expected an object with 'text' or 'messages'.",
                hint='Write {"text": "..."} or {"messages": [{"role": ..., "content": ...}]}.',
            )
    return docs


def _interleave(lists: list[list[Document]]) -> list[Document]:
    """Spread every file evenly over the stream: next comes a document of the file that is
    least far through (by characters), so prose, code and chat all reach the scored halves
    of the chunks, even when only the first few chunks are evaluated."""
    sizes = [[_size(doc) for doc in docs] for docs in lists]
    totals = [sum(s) or 1 for s in sizes]
    done = [0] * len(lists)
    taken = [0] * len(lists)
    out: list[Document] = []
    while True:
        open_files = [i for i, docs in enumerate(lists) if taken[i] < len(docs)]
        if not open_files:
            return out
        pick = min(open_files, key=lambda i: (done[i] / totals[i], i))
        out.append(lists[pick][taken[pick]])
        done[pick] += sizes[pick][taken[pick]]
        taken[pick] += 1


def _size(doc: Document) -> int:
    return len(doc.text) if doc.kind == "text" else len(json.dumps(doc.messages))


# --- rendering and labelling ----------------------------------------------------------------


def render_document(doc: Document, tokenizer: Tokenizer) -> tuple[str, list[tuple[int, int, int]]]:
    """The document's text and its labelled character spans [(start, end, label)]."""
    if doc.kind == "text":
        return doc.text, []
    template_name = "tool_use" if doc.tools and tokenizer.chat_template("tool_use") else "default"
    template = tokenizer.chat_template(template_name)
    if template is None:
        raise CorpusError(
            "The corpus has chat samples but the model has no chat template.",
            hint="Pass --corpus with a plain text file for a model without a template.",
        )
    messages = [dict(m) for m in doc.messages]
    text = _render(template, messages, doc.tools, tokenizer)
    if any(m.get("tool_calls") for m in messages) and "<tool_call>" not in text:
        messages = [_flatten_tool_calls(m) for m in messages]  # template ignores tool_calls
        text = _render(template, messages, doc.tools, tokenizer)
    regions = _assistant_regions(template, messages, doc.tools, tokenizer, text)
    spans = [(start, end, ASSISTANT) for start, end in regions]
    for start, end in regions:
        for label, open_tag, close_tag in _TAG_SPANS:
            pattern = re.compile(
                re.escape(open_tag) + r".*?(?:" + re.escape(close_tag) + "|$)", re.S
            )
            for match in pattern.finditer(text, start, end):
                spans.append((match.start(), match.end(), label))
    return text, spans


def _render(
    template: str, messages: list[dict[str, Any]], tools, tokenizer: Tokenizer, **kw
) -> str:
    from ..formats.chat_template import render

    return render(template, messages, tools=list(tools) or None, bos_token=tokenizer.bos_text, **kw)


def _flatten_tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if message.get("role") == "tool":
        return {**message, "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    if not calls:
        return message
    blocks = [
        "<tool_call>\n"
        + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        + "\n</tool_call>"
        for c in calls
    ]
    content = "\n".join([message.get("content") or "", *blocks]).lstrip("\n")
    return {"role": message["role"], "content": content}


def _assistant_regions(template, messages, tools, tokenizer, text) -> list[tuple[int, int]]:
    """Character ranges of each assistant turn (content, tool calls and turn end): the part
    a render with the turn differs from a render that stops at the generation prompt."""
    regions = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(template, messages[:index], tools, tokenizer, add_generation_prompt=True)
        upto = _render(template, messages[: index + 1], tools, tokenizer)
        if text.startswith(before) and text.startswith(upto) and len(upto) > len(before):
            regions.append((len(before), len(upto)))
            cursor = len(upto)
            continue
        # Templates that rewrite history (e.g. drop old <think> blocks): find the content.
        content = message.get("content") or ""
        for candidate in (content, content.split("</think>")[-1].lstrip()):
            found = text.find(candidate, cursor) if candidate else -1
            if found >= 0:
                regions.append((found, found + len(candidate)))
                cursor = found + len(candidate)
                break
    return regions


def build_stream(corpus: Corpus, tokenizer: Tokenizer) -> TokenStream:
    """Tokenize every document (special tokens matched, no BOS) and join them; the stream
    starts with BOS where the model adds one."""
    ids: list[int] = []
    labels: list[int] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
        labels.append(0)
    for doc in corpus.documents:
        text, spans = render_document(doc, tokenizer)
        doc_ids, starts = tokenizer.encode(text)
        ids.extend(doc_ids)
        labels.extend(_label(starts, spans))
    return TokenStream(tuple(ids), tuple(labels))


def _label(starts: list[int], spans: list[tuple[int, int, int]]) -> list[int]:
    out = []
    for start in starts:
        mask = 0
        for lo, hi, label in spans:
            if lo <= start < hi:
                mask |= label
        out.append(mask)
    return out


def first_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))
