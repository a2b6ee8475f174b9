"""Comparisons shared by the GGUF and safetensors inspections: added tokens as single
ids, the rendering battery, and tokenization parity. Each returns one Check whose evidence
names the first differences in words a user can act on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .battery import CONVERSATIONS, CORPUS, Conversation
from .check import Check
from .sides import RenderFailure, Side

SINGLE_IDS = "special tokens single ids"
RENDERING = "chat templates render identically"
TOKENIZATION = "tokenization parity"
_SHOWN = 4  # problems quoted in one evidence string


def few(items: Sequence[str], shown: int = _SHOWN) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def single_ids_check(expected: Iterable[tuple[str, int]], runtime: Side, what: str) -> Check:
    """Every (token text, id) encodes in the runtime to exactly [id]."""
    expected = list(expected)
    wrong = []
    for content, token_id in expected:
        ids = runtime.encode(content) or []
        if ids != [token_id]:
            shape = "is split into" if len(ids) > 1 else "encodes to"
            pieces = " ".join(repr(runtime.piece(i)) for i in ids[:6])
            wrong.append(f"{content!r} (id {token_id}) {shape} {ids[:6]} [{pieces}]")
    if wrong:
        return Check(
            SINGLE_IDS,
            False,
            f"{len(wrong)} of {len(expected)} {what} are not single tokens in "
            f"{runtime.label}: {few(wrong)}",
        )
    return Check(SINGLE_IDS, True, f"{len(expected)} {what} encode to their ids in {runtime.label}")


def first_difference(a: Sequence, b: Sequence) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _snippet(text: str, at: int) -> str:
    return repr(text[max(0, at - 20) : at + 25])


def _try(side: Side, name: str, conv: Conversation) -> str | RenderFailure:
    try:
        return side.render(name, conv)
    except RenderFailure as exc:
        return exc


def _escapes(result: str | RenderFailure) -> bool:
    """A failure that stops the template: it tried to leave the sandbox, or ran past a
    render limit (another conversation would only cost another timeout)."""
    return isinstance(result, RenderFailure) and (result.security or result.limit)


def render_check(
    reference: Side,
    runtime: Side,
    names: Sequence[str],
    *,
    special_texts: dict[str, int] | None = None,
    conversations: Sequence[Conversation] = CONVERSATIONS,
) -> Check:
    """Render every template `names` lists with every battery conversation on both sides;
    the strings and their token ids must be equal. Where the reference has no tokenizer,
    `special_texts` (token text -> id) stands in: every occurrence of one of those texts in
    the rendering must be that single id in the runtime's tokens."""
    if not names:
        return Check(RENDERING, True, "no chat templates to render", fatal=False)
    problems: list[str] = []
    rendered = refused = 0
    for name in names:
        if name not in runtime.templates:
            problems.append(f"template {name!r} is missing in {runtime.label}")
            continue
        before, first_refusal = rendered, None
        for conv in conversations:
            where = f"{name}/{conv.name}"
            # One side at a time: a template that reaches outside the sandbox or past the
            # render limits is reported and never handed to the next renderer.
            ref = _try(reference, name, conv)
            got = ref if _escapes(ref) else _try(runtime, name, conv)
            if _escapes(ref) or _escapes(got):
                escaped = ref if _escapes(ref) else got
                problems.append(f"template {name!r} {escaped}; it was not rendered further")
                break
            if isinstance(ref, RenderFailure) and isinstance(got, RenderFailure):
                refused += 1  # the template refuses this shape of chat, on both sides
                first_refusal = first_refusal or ref
                continue
            if isinstance(ref, RenderFailure) or isinstance(got, RenderFailure):
                side, err = (reference, ref) if isinstance(ref, RenderFailure) else (runtime, got)
                problems.append(f"{where}: only {side.label} fails ({err})")
                continue
            rendered += 1
            if ref != got:
                at = first_difference(ref, got)
                problems.append(
                    f"{where}: text differs at character {at}: {reference.label} "
                    f"{_snippet(ref, at)}, {runtime.label} {_snippet(got, at)}"
                )
                continue
            problem = _ids_problem(reference, runtime, got, special_texts)
            if problem:
                problems.append(f"{where}: {problem}")
        if rendered == before and first_refusal is not None:
            problems.append(f"template {name!r} renders none of the battery ({first_refusal})")
    total = len(names) * len(conversations)
    if problems:
        return Check(
            RENDERING,
            False,
            f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: {few(problems)}",
        )
    how = "same text and ids" if reference.encode("x") is not None else "same text; tags one id"
    tail = f", {refused} refused by the template on both sides" if refused else ""
    return Check(
        RENDERING,
        True,
        f"{rendered} of {total} renderings ({len(names)} templates x {len(conversations)} "
        f"conversations) identical in {reference.label} and {runtime.label}, {how}{tail}",
    )


def _ids_problem(
    reference: Side, runtime: Side, text: str, special_texts: dict[str, int] | None
) -> str | None:
    got = runtime.encode(text) or []
    want = reference.encode(text)
    if want is not None:
        if want == got:
            return None
        at = first_difference(want, got)
        return (
            f"token ids differ at position {at}: {reference.label} {want[at : at + 4]} "
            f"[{' '.join(repr(reference.piece(i)) for i in want[at : at + 4])}], "
            f"{runtime.label} {got[at : at + 4]} "
            f"[{' '.join(repr(runtime.piece(i)) for i in got[at : at + 4])}]"
        )
    for content, token_id in (special_texts or {}).items():
        if content in text and text.count(content) != got.count(token_id):
            return (
                f"{content!r} occurs {text.count(content)} times in the text but id "
                f"{token_id} {got.count(token_id)} times in {runtime.label}'s tokens"
            )
    return None


def tokenization_check(
    reference: Side,
    runtime: Side,
    *,
    corpus: Sequence[tuple[str, str]] = CORPUS,
    special_texts: dict[str, int] | None = None,
) -> Check:
    """The corpus tokenizes to identical ids on both sides, with and without the tokenizer's
    own BOS/EOS. Without a reference tokenizer: every text round-trips through the runtime
    (decode(encode(text)) == text) and every special text is one token."""
    problems: list[str] = []
    if reference.encode("x") is None:
        decode = getattr(runtime, "decode", None)
        for label, text in corpus:
            ids = runtime.encode(text) or []
            if decode is not None and decode(ids) != text:
                problems.append(f"{label}: {text!r} decodes back as {decode(ids)!r}")
            problem = _ids_problem(reference, runtime, text, special_texts)
            if problem:
                problems.append(f"{label}: {problem}")
        if problems:
            return Check(
                TOKENIZATION,
                False,
                f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: {few(problems)}",
            )
        return Check(
            TOKENIZATION,
            True,
            f"no reference tokenizer (pass --against SOURCE for id parity); {len(corpus)} "
            f"texts round-trip through {runtime.label} and every tag is one token",
        )
    cases = [(label, text, False) for label, text in corpus]
    cases += [("with BOS/EOS added", corpus[0][1], True), ("tags, BOS/EOS", corpus[-1][1], True)]
    for label, text, add_special in cases:
        want = reference.encode(text, add_special=add_special) or []
        got = runtime.encode(text, add_special=add_special) or []
        if want != got:
            at = first_difference(want, got)
            problems.append(
                f"{label}: ids differ at position {at}: {reference.label} {want[at : at + 4]} "
                f"[{' '.join(repr(reference.piece(i)) for i in want[at : at + 4])}], "
                f"{runtime.label} {got[at : at + 4]} "
                f"[{' '.join(repr(runtime.piece(i)) for i in got[at : at + 4])}]"
            )
    if problems:
        return Check(
            TOKENIZATION, False, f"{len(problems)} of {len(cases)} texts differ: {few(problems)}"
        )
    return Check(
        TOKENIZATION,
        True,
        f"{len(cases)} texts (prose, code, numbers, unicode, whitespace, tags) tokenize to "
        f"identical ids in {reference.label} and {runtime.label}",
    )
