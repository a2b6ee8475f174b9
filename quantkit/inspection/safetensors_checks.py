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
from pathlib import Path
from typing import Any

from ..backends.artifact_files import BYTE_IDENTICAL_FILES, chat_template_value, turn_end_eos_ids
from ..chat_template import TemplateError
from ..tokenizer_bundle import TokenizerBundle, load_tokenizer_bundle, read_chat_templates
from ..verify import Check
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
    if reference is not None:
        ref: Side = CachedTransformersSide(reference.path, "transformers (source)")
        bundle = reference.bundle
        expected = [(t.content, t.id) for t in bundle.added_tokens]
        what = "added tokens of the source"
    else:
        variables = {f"{r}_token": own.special_token(r) or "" for r in ("bos", "eos", "pad", "unk")}
        ref = SandboxSide(
            read_chat_templates(folder), variables, "tokenizers + quantkit's sandbox",
            tokenizer_json=folder / "tokenizer.json",
        )  # fmt: skip
        bundle = own
        expected = [(t.content, t.id) for t in own.added_tokens]
        what = "added tokens of tokenizer.json"
    single = single_ids_check(expected, runtime, what)
    drift = _added_tokens_drift(own)
    if drift:
        single = Check(SINGLE_IDS, False, few(drift) + ("" if single.passed else "; " +
                       single.evidence))  # fmt: skip
    names = sorted(bundle.chat_templates)
    checks = [
        single,
        eos_check(folder, bundle, runtime),
        bos_pad_check(folder, runtime, ref if reference is not None else None),
        templates_check(folder, runtime, reference),
        render_check(ref, runtime, names),
        tokenization_check(ref, runtime),
    ]
    if isinstance(ref, CachedTransformersSide):
        ref.save()
    return checks


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
        return Check(TURN_END, True, "no chat template, so no turn end to check", False)
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


def bos_pad_check(folder: Path, runtime: TransformersSide, source: Side | None) -> Check:
    ours = {role: runtime.token_id(role) for role in ("bos", "eos", "pad")}
    evidence = ", ".join(f"{role} id {value}" for role, value in ours.items())
    problems = []
    if isinstance(source, TransformersSide | CachedTransformersSide):
        for role, value in ours.items():
            theirs = source.token_id(role)
            if value != theirs:
                problems.append(f"{role} id {value}, the source tokenizer's is {theirs}")
    if problems:
        return Check(BOS_PAD, False, "; ".join(problems))
    return Check(BOS_PAD, True, evidence + ("; equal to the source's" if source else ""))


def templates_check(folder: Path, runtime: TransformersSide, reference: Reference | None) -> Check:
    """Templates in every place loaders look (tokenizer_config.json for older loaders and
    TGI, chat_template.jinja and additional_chat_templates/ for transformers 5), equal to each
    other, to what transformers loads, and with a source byte-identical to the source's."""
    files = read_chat_templates(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    in_config = config.get("chat_template")
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
