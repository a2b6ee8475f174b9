"""The inspection of a safetensors folder (BF16/FP16, FP8, GPTQ) in transformers, the
library that loads it (vLLM and TGI read the same tokenizer files).

With a source the reference is the source tokenizer in transformers. Without one it is the
raw `tokenizers` library on the folder's tokenizer.json plus quantkit's sandboxed renderer
over the template files: an independent reading of the same files, which catches a
tokenizer_config.json that transformers reads differently from tokenizer.json (a dropped
added token, a template in one place but not the other).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..artifact.tokenizer_files import BYTE_IDENTICAL_FILES, chat_template_value, turn_end_eos_ids
from ..formats.chat_template import TemplateError
from ..formats.tokens import HERMES_TAGS
from ..source.tokenizer_bundle import (
    TokenizerBundle,
    load_tokenizer_bundle,
    read_chat_templates,
)
from .check import Check
from .compare import SINGLE_IDS, few, render_check, single_ids_check, tokenization_check
from .reference import Reference
from .sides import SandboxSide, Side, TransformersSide
from .source_cache import CachedTransformersSide

TURN_END = "generation_config eos is the turn end"
BOS_PAD = "BOS and PAD tokens"
TEMPLATES_SAME = "chat templates byte-identical"
TEMPLATES_PRESENT = "chat templates present"


def safetensors_checks(folder: Path, reference: Reference | None) -> list[Check]:
    own = load_tokenizer_bundle(folder)
    runtime = TransformersSide(folder, "transformers (artifact)")
    raw: SandboxSide | None = None
    if reference is not None:
        ref: Side = CachedTransformersSide(reference.path, "transformers (source)")
        bundle = reference.bundle
        expected = [(t.content, t.id) for t in bundle.added_tokens]
        what = "added tokens of the source"
    else:
        raw = SandboxSide(
            read_chat_templates(folder),
            {f"{r}_token": own.special_token(r) or "" for r in ("bos", "eos", "pad", "unk")},
            "tokenizers + quantkit's sandbox",
            tokenizer_json=folder / "tokenizer.json",
        )
        ref = raw
        bundle = own
        expected = [(t.content, t.id) for t in own.added_tokens]
        what = "added tokens of tokenizer.json"
    single = single_ids_check(expected, runtime, what)
    problems = _added_tokens_drift(own)
    written = 0
    if reference is None:
        # Without a source nothing else says which tags must exist: the ones the templates
        # write (and the Hermes tags tokenizer_config.json names) must each be one token.
        written, missing = template_token_problems(own, runtime)
        problems += missing
        if not problems and single.passed:
            single = Check(
                SINGLE_IDS, True, f"{single.evidence}; the {written} special tokens the "
                "templates and tokenizer_config.json write are single tokens too",
            )  # fmt: skip
    if problems:
        single = Check(SINGLE_IDS, False, few(problems) + ("" if single.passed else "; " +
                       single.evidence))  # fmt: skip
    names = sorted(bundle.chat_templates)
    checks = [
        single,
        eos_check(folder, bundle, runtime),
        bos_pad_check(own, runtime, raw if reference is None else ref),
        templates_check(folder, own, runtime, reference),
        render_check(ref, runtime, names),
        tokenization_check(ref, runtime),
    ]
    if isinstance(ref, CachedTransformersSide):
        ref.save()
    return checks


_SPECIAL_LOOKING = re.compile(r"<\|[^\s<>|{}]{1,64}\|>|<｜[^\s<>｜{}]{1,64}｜>")


def template_token_problems(own: TokenizerBundle, runtime: Side) -> tuple[int, list[str]]:
    """Every special-looking token (`<|...|>`, a Hermes tag) the chat templates write, and
    every Hermes tag tokenizer_config.json names, must encode to one id in the runtime:
    (how many were checked, the problems)."""
    written: dict[str, str] = {}
    for name, template in sorted(own.chat_templates.items()):
        for text in [*_SPECIAL_LOOKING.findall(template), *(t for t in HERMES_TAGS if t in
                     template)]:  # fmt: skip
            written.setdefault(text, f"template {name!r} writes")
    config_text = json.dumps(own.tokenizer_config, ensure_ascii=False)
    for tag in HERMES_TAGS:
        if tag in config_text:
            written.setdefault(tag, "tokenizer_config.json names")
    problems = []
    for text, where in written.items():
        ids = runtime.encode(text) or []
        if len(ids) != 1:
            pieces = " ".join(repr(runtime.piece(i)) for i in ids[:6])
            problems.append(
                f"{where} {text!r} but it is not one token in {runtime.label}: it is split "
                f"into {ids[:6]} [{pieces}] (tokenizer.json lacks it as an added token)"
            )
    return len(written), problems


def _added_tokens_drift(own: TokenizerBundle) -> list[str]:
    """tokenizer_config.json's added_tokens_decoder and tokenizer.json's added_tokens must
    list the same tokens: loaders read one or the other."""
    in_json = {t.id: t.content for t in own.added_tokens}
    decoder = own.tokenizer_config.get("added_tokens_decoder") or {}
    problems = []
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if in_json.get(int(key)) != content:
            problems.append(
                f"{content!r} (id {key}) is in tokenizer_config.json but "
                + ("missing from" if int(key) not in in_json else "different in")
                + " tokenizer.json's added tokens"
            )
    return problems


def eos_check(folder: Path, bundle: TokenizerBundle, runtime: TransformersSide) -> Check:
    """generation_config.json's eos ids (where transformers and vLLM stop) contain the chat
    template's turn end; the tokenizer's eos is the turn end or one of those ids."""
    try:
        expected = turn_end_eos_ids(bundle)
    except TemplateError as exc:
        return Check(TURN_END, False, f"the default template fails: {exc}")
    if expected is None:
        if "default" not in bundle.chat_templates:
            return Check(TURN_END, True, "no chat template, so no turn end to check", False)
        return Check(
            TURN_END, False, "the default template writes no special token after an assistant "
            "reply, so there is no turn-end token to stop at",
        )  # fmt: skip
    turn_end_id = expected[0]
    path = folder / "generation_config.json"
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    eos = config.get("eos_token_id")
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    tok_eos = runtime.token_id("eos")
    evidence = (
        f"eos_token_id {eos}; turn end {runtime.piece(turn_end_id)!r} id {turn_end_id}; "
        f"tokenizer eos id {tok_eos}"
    )
    problems = []
    if turn_end_id not in eos_ids:
        problems.append(
            f"generation_config.json's eos_token_id {eos} lacks the turn end "
            f"{runtime.piece(turn_end_id)!r} (id {turn_end_id}): generation runs past the reply"
        )
    if tok_eos is not None and tok_eos != turn_end_id and tok_eos not in eos_ids:
        problems.append(f"the tokenizer's eos id {tok_eos} is neither the turn end nor a stop id")
    if problems:
        return Check(TURN_END, False, "; ".join(problems))
    return Check(TURN_END, True, evidence)


def bos_pad_check(own: TokenizerBundle, runtime: TransformersSide, other: Side) -> Check:
    """With a source: BOS/EOS/PAD ids and whether BOS is added to prompts equal the
    source's. Without one: the bos/eos/pad tokens tokenizer_config.json names are single
    tokens of tokenizer.json, transformers reads those ids, and generation_config.json's
    bos/pad ids are the same tokens. `other` is the source (CachedTransformersSide) or the
    raw tokenizers reading of the folder (SandboxSide)."""
    source = None if isinstance(other, SandboxSide) else other
    ours = {role: runtime.token_id(role) for role in ("bos", "eos", "pad")}
    adds = _adds_bos(runtime)
    evidence = ", ".join(f"{role} id {value}" for role, value in ours.items())
    evidence += f"; BOS added to prompts: {adds}"
    problems = []
    if source is not None:
        for role, value in ours.items():
            theirs = source.token_id(role)  # type: ignore[attr-defined]
            if value != theirs:
                problems.append(f"{role} id {value}, the source tokenizer's is {theirs}")
        if adds != _adds_bos(source):
            problems.append(
                f"transformers {'adds' if adds else 'does not add'} BOS to prompts, the source "
                f"tokenizer {'does' if not adds else 'does not'}"
            )
    else:
        assert isinstance(other, SandboxSide)
        problems = _named_specials_problems(own, ours, other)
    if problems:
        return Check(BOS_PAD, False, "; ".join(problems) + f" ({evidence})")
    tail = "; equal to the source's" if source else (
        "; the tokens tokenizer_config.json names, one token each in tokenizer.json, "
        "as generation_config.json names them"
    )  # fmt: skip
    return Check(BOS_PAD, True, evidence + tail)


def _adds_bos(side: Side) -> bool:
    """Whether the tokenizer puts BOS in front of a text it encodes with its specials."""
    from .battery import CORPUS

    bos = side.token_id("bos")  # type: ignore[attr-defined]
    text = CORPUS[0][1]  # already encoded both ways by the tokenization check: cached
    plain = side.encode(text) or []
    full = side.encode(text, add_special=True) or []
    return bos is not None and full[:1] == [bos] and plain[:1] != [bos]


def _named_specials_problems(
    own: TokenizerBundle, ours: dict[str, int | None], raw: SandboxSide
) -> list[str]:
    problems = []
    generation = own.generation_config
    for role in ("bos", "eos", "pad"):
        text = own.special_token(role)
        if not text:
            continue
        token_id = raw.tokenizer.token_to_id(text) if raw.tokenizer is not None else None
        if token_id is None:
            problems.append(
                f"tokenizer_config.json's {role}_token {text!r} is not a token of tokenizer.json"
            )
            continue
        ids = raw.encode(text) or []
        if ids != [token_id]:
            problems.append(
                f"{role}_token {text!r} (id {token_id}) is not one token in tokenizer.json: it "
                f"encodes to {ids[:6]}"
            )
        if ours[role] != token_id:
            problems.append(
                f"transformers reads {role} id {ours[role]}, tokenizer.json has {text!r} as id "
                f"{token_id}"
            )
        named = generation.get(f"{role}_token_id")
        if role != "eos" and isinstance(named, int) and named != token_id:
            # eos: generation_config's list is the turn end's business (the eos check)
            problems.append(
                f"generation_config.json's {role}_token_id is {named}, tokenizer_config.json's "
                f"{role}_token {text!r} is id {token_id}"
            )
    return problems


def templates_check(
    folder: Path, own: TokenizerBundle, runtime: TransformersSide, reference: Reference | None
) -> Check:
    """Templates in every place loaders look (tokenizer_config.json for older loaders and
    TGI, chat_template.jinja and additional_chat_templates/ for transformers 5), equal to each
    other, to what transformers loads, and with a source byte-identical to the source's."""
    files = read_chat_templates(folder)
    in_config = own.tokenizer_config.get("chat_template")  # {} without tokenizer_config.json
    problems = []
    if in_config is not None and in_config != chat_template_value(files):
        problems.append(
            "tokenizer_config.json's chat_template differs from chat_template.jinja / "
            "additional_chat_templates (older loaders and newer ones would chat differently)"
        )
    if runtime.templates != files:
        problems.append("transformers loads different templates from the files")
    if reference is not None:
        wanted = reference.bundle.chat_templates
        for name in sorted(set(wanted) | set(files)):
            if name not in files:
                problems.append(f"template {name!r} of the source is missing")
            elif files[name] != wanted.get(name):
                problems.append(f"template {name!r} differs from the source's")
        for name in _byte_identical_names(reference.path, wanted):
            ours = folder / name
            if not ours.is_file() or ours.read_bytes() != (reference.path / name).read_bytes():
                problems.append(f"{name} is not byte-identical to the source's")
    elif "default" not in files:
        problems.append("no default chat template: transformers' apply_chat_template fails")
    check = TEMPLATES_SAME if reference is not None else TEMPLATES_PRESENT
    if problems:
        return Check(check, False, few(problems))
    names = ", ".join(sorted(files)) or "none"
    same = "; tokenizer files byte-identical to the source's" if reference else ""
    return Check(check, True, f"templates {names} in tokenizer_config.json and .jinja files{same}")


def _byte_identical_names(src: Path, templates: dict[str, str]) -> list[str]:
    names = [n for n in BYTE_IDENTICAL_FILES if (src / n).is_file()]
    for template in templates:
        rel = (
            "chat_template.jinja"
            if template == "default"
            else f"additional_chat_templates/{template}.jinja"
        )
        if (src / rel).is_file():
            names.append(rel)
    return names
