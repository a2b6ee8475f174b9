"""The inspection of a GGUF (one file or a split set), in llama.cpp itself.

The vocabulary is loaded vocab-only through llama-cpp-python (no weights: a fraction of a
second even for a 128k vocabulary); token types and templates are also read from the file
as stored, because llama.cpp retypes some tokens at load time and the policy is about what
the file says. With a source the reference is the source tokenizer in transformers;
without one it is quantkit's sandboxed renderer over the file's own templates (transformers'
GGUF tokenizer loader is no independent check: in transformers 5.17 it takes 10-20 s and
splits USER_DEFINED tags and Llama-3 number runs differently from the real tokenizers).
"""

from __future__ import annotations

from pathlib import Path

from gguf import Keys

from ..formats.chat_template import TemplateError, turn_end_token
from ..formats.gguf_read import TensorTypeError, read_f32_tensor
from ..formats.tokens import HERMES_TAGS, TokenType, TokenTypePolicy, looks_like_control
from .battery import CONVERSATIONS
from .check import Check
from .compare import few, first_difference, render_check, single_ids_check, tokenization_check
from .gguf_meta import GGUFMeta, read_gguf_meta
from .reference import Reference
from .rope import ROPE, TENSOR, rope_check
from .sides import LlamaCppSide, SandboxSide, Side
from .source_cache import CachedTransformersSide

TYPES = "token types follow the policy"
TURN_END = "turn end is end-of-generation"
BOS_PAD = "BOS and PAD tokens"
TEMPLATES_SAME = "chat templates byte-identical"
TEMPLATES_PRESENT = "chat templates present"
_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED)


def gguf_checks(
    files: list[Path], reference: Reference | None, *, policy: TokenTypePolicy | None = None
) -> list[Check]:
    meta = read_gguf_meta(files[0])
    with LlamaCppSide(files[0]) as runtime:
        specials = special_tokens(meta)
        if reference is not None:
            ref: Side = CachedTransformersSide(reference.path, "transformers (source)")
            expected = [(t.content, t.id) for t in reference.bundle.added_tokens]
            what = "added tokens of the source"
        else:
            ref = SandboxSide(meta.templates, _variables(meta), "quantkit's sandbox")
            expected = sorted(specials.items(), key=lambda item: item[1])
            what = "control and user-defined tokens"
        names = sorted(reference.bundle.chat_templates if reference else meta.templates)
        checks = [
            single_ids_check(expected, runtime, what),
            types_check(meta, reference, policy or TokenTypePolicy(), specials),
            turn_end_check(meta, runtime, reference, specials),
            bos_pad_check(runtime, reference),
            templates_check(meta, runtime, reference),
            render_check(ref, runtime, names, special_texts=specials),
            tokenization_check(ref, runtime, special_texts=specials),
        ]
        rope = _rope(files, meta, reference)
        if rope is not None:
            checks.append(rope)
        if isinstance(ref, CachedTransformersSide):
            ref.save()
        return checks


def _rope(files: list[Path], meta: GGUFMeta, reference: Reference | None) -> Check | None:
    try:
        values = read_f32_tensor(files, TENSOR)
    except TensorTypeError as exc:
        return Check(
            ROPE, False, f"{exc}: llama.cpp's rope takes its frequency factors only as F32 "
            "and stops on this file; re-convert it",
        )  # fmt: skip
    return rope_check(meta, values, reference.config if reference else None)


def special_tokens(meta: GGUFMeta) -> dict[str, int]:
    """text -> id of every token the file types CONTROL or USER_DEFINED."""
    return {
        text: i
        for i, (text, kind) in enumerate(zip(meta.tokens, meta.token_types, strict=False))
        if kind in _SPECIAL_TYPES
    }


def stored_turn_end(meta: GGUFMeta) -> str | None:
    """The token the file's own default template writes after an assistant reply (None
    without a template, or when it writes none or fails to render)."""
    template = meta.templates.get("default")
    if template is None:
        return None
    candidates = marker_candidates(meta, special_tokens(meta))
    try:
        return turn_end_token(template, list(candidates), **_variables(meta))
    except TemplateError:
        return None


def marker_candidates(meta: GGUFMeta, specials: dict[str, int]) -> dict[str, int]:
    """The tokens that can be turn markers, whatever type the file stores for them: every
    CONTROL / USER_DEFINED token and every token that looks like one (`<|...|>`), so a
    turn marker retyped NORMAL is still found in what the template writes."""
    out = dict(specials)
    for i, text in enumerate(meta.tokens):
        if text not in out and looks_like_control(text):
            out[text] = i
    return out


def _variables(meta: GGUFMeta) -> dict[str, str]:
    """bos_token / eos_token as llama-cpp-python passes them to templates."""
    out = {}
    for role in ("bos", "eos"):
        token_id = meta.special_id(role)
        if token_id is not None and 0 <= token_id < len(meta.tokens):
            out[f"{role}_token"] = meta.tokens[token_id]
    return out


def _turn_markers(template: str | None, candidates: list[str], variables: dict) -> list[str]:
    """The special tokens the default template writes around turns (role headers, turn
    ends, BOS): the tokens that must stay CONTROL."""
    from ..formats.chat_template import render

    if not template:
        return []
    conv = next(c for c in CONVERSATIONS if c.name == "multi-turn")
    try:
        text = render(template, conv.messages, add_generation_prompt=True, **variables)
    except TemplateError:
        return []
    return [tok for tok in candidates if tok in text and tok not in HERMES_TAGS]


def types_check(
    meta: GGUFMeta,
    reference: Reference | None,
    policy: TokenTypePolicy,
    specials: dict[str, int],
) -> Check:
    """Hermes tags USER_DEFINED (printed, seen by tool-call parsers), turn markers CONTROL
    (hidden, stoppable), per docs/formats.md; tag pairs complete; tags the templates write
    exist as tokens."""
    by_text = {text: i for i, text in enumerate(meta.tokens)}
    if reference is not None:
        added = {t.content: t.special for t in reference.bundle.added_tokens}
        templates = reference.bundle.chat_templates
        variables = {f"{r}_token": reference.bundle.special_token(r) or "" for r in ("bos", "eos")}
    else:
        control = int(TokenType.CONTROL)
        added = {
            text: looks_like_control(text) or meta.token_types[i] == control
            for text, i in marker_candidates(meta, specials).items()
        }
        templates = meta.templates
        variables = _variables(meta)
    candidates = [t for t, special in added.items() if special or looks_like_control(t)]
    markers = _turn_markers(templates.get("default"), candidates, variables)
    tags = [t for t in HERMES_TAGS if t in added or t in by_text]
    wrong, problems = [], []
    for text in tags + markers:
        want = policy.type_of(text, added.get(text, text in markers))
        token_id = by_text.get(text)
        if token_id is None:
            continue  # reported below or by the single-ids check
        got = meta.token_types[token_id]
        if got != want:
            why = (
                "hidden from replies, so tool-call and reasoning parsers never see it"
                if text in tags
                else "printed in replies instead of hidden"
            )
            wrong.append(
                f"{text!r} (id {token_id}) is {_name(got)}, the policy says {want.name}: {why}"
            )
    for open_tag, close_tag in zip(HERMES_TAGS[::2], HERMES_TAGS[1::2], strict=True):
        present = [t in by_text for t in (open_tag, close_tag)]
        if any(present) and not all(present):
            missing = open_tag if not present[0] else close_tag
            problems.append(f"{missing!r} is missing from the vocabulary while its pair is there")
    for name, template in sorted(meta.templates.items()):
        for tag in HERMES_TAGS:
            if tag in template and tag not in by_text:
                problems.append(f"template {name!r} writes {tag!r} but no such token exists")
    if wrong or problems:
        return Check(TYPES, False, few(wrong + problems))
    return Check(
        TYPES,
        True,
        f"{len(tags)} Hermes tags USER_DEFINED, {len(markers)} turn markers CONTROL "
        f"({', '.join(markers) or 'none'})",
    )


def _name(kind: int) -> str:
    try:
        return TokenType(kind).name
    except ValueError:
        return f"type {kind}"


def turn_end_check(
    meta: GGUFMeta, runtime: LlamaCppSide, reference: Reference | None, specials: dict[str, int]
) -> Check:
    """The token the default template writes after an assistant reply ends generation in
    llama.cpp and is EOS. A default template after whose replies no special-looking token
    can be identified fails: there is nothing to stop at."""
    if reference is not None:
        bundle = reference.bundle
        template = bundle.chat_templates.get("default")
        candidates = {
            t.content: t.id
            for t in bundle.added_tokens
            if t.special or looks_like_control(t.content)
        }
        variables = {f"{r}_token": bundle.special_token(r) or "" for r in ("bos", "eos")}
        whose = "the source's default template"
    else:
        template = meta.templates.get("default")
        candidates = marker_candidates(meta, specials)
        variables = _variables(meta)
        whose = "the default template"
    if template is None:
        return Check(TURN_END, True, "no chat template, so no turn end to check", fatal=False)
    try:
        turn_end = turn_end_token(template, list(candidates), **variables)
    except TemplateError as exc:
        return Check(TURN_END, False, f"{whose} fails: {exc}")
    turn_end_id = candidates.get(turn_end) if turn_end else None
    if turn_end is None or turn_end_id is None:
        return Check(
            TURN_END, False, f"{whose} writes no special token after an assistant reply, so "
            "there is no turn-end token to stop at: runtimes only stop at EOS "
            f"({runtime.text(runtime.special_id('eos'))!r}) or at the token limit",
        )  # fmt: skip
    specials = {**specials, turn_end: turn_end_id}
    eos, eot = runtime.special_id("eos"), runtime.special_id("eot")
    is_eog = runtime.is_eog(turn_end_id)
    eog_ids = sorted({i for i in [*specials.values(), eos, eot] if i >= 0 and runtime.is_eog(i)})
    evidence = (
        f"{turn_end} (id {turn_end_id}): eog={is_eog}, eos id={eos}, eot id={eot}; "
        f"llama.cpp ends generation at ids {eog_ids[:8]}"
    )
    problems = []
    if not is_eog:
        problems.append(
            f"llama.cpp does not end generation at {turn_end!r}: replies run on into a "
            "made-up next turn"
        )
    if eos != turn_end_id:
        problems.append(
            f"EOS is {runtime.text(eos)!r} (id {eos}), not the turn end {turn_end!r}: "
            "runtimes and chat handlers that stop at EOS only run past the reply"
        )
    if eot not in (turn_end_id, -1):
        # llama.cpp guesses EOT from token texts when the file names none (llama.cpp's own
        # converter writes none): generation still stops at the turn end, so only say so.
        evidence += f"; note: EOT is {runtime.text(eot)!r}, not the turn end"
    if problems:
        return Check(TURN_END, False, "; ".join(problems) + f" ({evidence})")
    return Check(TURN_END, True, evidence)


def bos_pad_check(runtime: LlamaCppSide, reference: Reference | None) -> Check:
    bos, pad, add_bos = runtime.special_id("bos"), runtime.special_id("pad"), runtime.add_bos()
    evidence = f"BOS {runtime.text(bos)!r} (id {bos}), added to prompts: {add_bos}; " + (
        f"PAD {runtime.text(pad)!r} (id {pad})" if pad >= 0 else "no PAD"
    )
    problems = []
    if reference is not None:
        bundle = reference.bundle
        src_bos = bundle.token_id(bundle.special_token("bos") or "")
        src_pad = bundle.token_id(bundle.special_token("pad") or "")
        if src_pad is None and isinstance(reference.config.get("pad_token_id"), int):
            src_pad = reference.config["pad_token_id"]
        if src_bos is not None and bos != src_bos:
            problems.append(f"BOS id {bos}, the source's is {src_bos}")
        if add_bos != bundle.add_bos:
            problems.append(
                f"llama.cpp {'adds' if add_bos else 'does not add'} BOS to prompts, the "
                f"source tokenizer {'does' if bundle.add_bos else 'does not'}"
            )
        if src_pad is not None and pad not in (src_pad, -1):
            problems.append(f"PAD id {pad}, the source's is {src_pad}")
    elif add_bos and bos < 0:
        problems.append("llama.cpp is told to add BOS but the GGUF names no BOS token")
    if problems:
        return Check(BOS_PAD, False, "; ".join(problems) + f" ({evidence})")
    return Check(BOS_PAD, True, evidence + ("; equal to the source's" if reference else ""))


def templates_check(meta: GGUFMeta, runtime: LlamaCppSide, reference: Reference | None) -> Check:
    stored = meta.templates
    problems = []
    for name in sorted(set(stored) | set(runtime.templates)):
        if stored.get(name) != runtime.templates.get(name):
            problems.append(f"llama.cpp reads template {name!r} differently from the file")
    listed = meta.values.get(Keys.Tokenizer.CHAT_TEMPLATES)
    named = sorted(n for n in stored if n != "default")
    if isinstance(listed, list) and sorted(map(str, listed)) != named:
        problems.append(
            f"{Keys.Tokenizer.CHAT_TEMPLATES} lists {sorted(listed)}, the file has {named}"
        )
    if reference is not None:
        wanted = reference.bundle.chat_templates
        for name in sorted(set(wanted) | set(stored)):
            if name not in stored:
                problems.append(f"template {name!r} of the source is missing")
            elif name not in wanted:
                problems.append(f"template {name!r} is not in the source")
            elif stored[name] != wanted[name]:
                at = first_difference(stored[name], wanted[name])
                problems.append(
                    f"template {name!r} differs from the source at character {at}: "
                    f"{stored[name][max(0, at - 15) : at + 20]!r} instead of "
                    f"{wanted[name][max(0, at - 15) : at + 20]!r}"
                )
        name = TEMPLATES_SAME
    else:
        name = TEMPLATES_PRESENT
        if "default" not in stored:
            problems.append(
                "no default chat template: llama-server and LM Studio fall back to a guessed "
                "format, without the Hermes tool-use prompt"
            )
    if problems:
        return Check(name, False, few(problems))
    listing = ", ".join(sorted(stored)) or "none"
    same = "byte-identical to the source, " if reference else ""
    return Check(
        name, True, f"templates {listing}: {same}read as stored by llama.cpp{_guessed(runtime)}"
    )


def _guessed(runtime: LlamaCppSide) -> str:
    """llama-cpp-python's Llama() swaps a few exact well-known templates for its own
    hard-coded formats (which render no tools); say so where it would."""
    from llama_cpp.llama_chat_format import guess_chat_format_from_gguf_metadata

    guess = guess_chat_format_from_gguf_metadata(runtime.llm.metadata)
    if guess is None:
        return ""
    return (
        f"; note: llama-cpp-python's Llama() uses its built-in {guess!r} format for this exact "
        "template unless given chat_format='chat_template.default'"
    )
