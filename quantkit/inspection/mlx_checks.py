"""The inspection of an MLX folder in mlx-lm, the runtime that loads it (mlx_lm.generate,
mlx_lm.chat, mlx_lm.server, LM Studio's MLX engine).

The battery is the safetensors one, with mlx-lm as the runtime side (MlxSide: its
TokenizerWrapper and the wrapper's apply_chat_template): added tokens as single ids, the
turn end among the eos ids mlx-lm stops at, BOS/PAD, templates byte-identical, the
rendering battery and tokenization parity. Two checks are mlx-lm's own: its streaming
detokenizer, fed the ids one at a time as stream_generate feeds it, prints every Hermes tag
whole; and (with --generate, and in convert) a greedy reply through mlx-lm's
stream_generate, the loop under mlx_lm.generate, ends at one of those eos ids.

With a source the reference is the source tokenizer in transformers; without one it is the
raw `tokenizers` library on the folder's tokenizer.json and quantkit's sandboxed renderer
over the template files, as for a safetensors folder.
"""

from __future__ import annotations

from pathlib import Path

from ..formats.chat_template import TemplateError
from ..formats.tokens import HERMES_TAGS
from ..planning.cost import REPLY_TOKENS
from ..source.tokenizer_bundle import (
    TokenizerBundle,
    load_tokenizer_bundle,
    read_chat_templates,
    template_turn_end,
)
from .check import GENERATION, Check
from .compare import few, first_difference, render_check, single_ids_check, tokenization_check
from .reference import Reference
from .safetensors_checks import BOS_PAD, bos_pad_check, template_token_problems
from .sides import MlxSide, SandboxSide, Side
from .source_cache import CachedTransformersSide

TURN_END = "turn end is an mlx-lm stop token"
TEMPLATES_SAME = "chat templates byte-identical"
TEMPLATES_PRESENT = "chat templates present"
STREAMING = "streaming detokenizer prints tags whole"
QUESTION = "What is the capital of France?"
# Where the tags come out of a Hermes model: a reasoning block, then a tool call.
_STREAM_TEXT = (
    "<think>\nThe user wants the weather in Paris, so I call the tool.\n</think>\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def mlx_checks(folder: Path, reference: Reference | None) -> list[Check]:
    own = load_tokenizer_bundle(folder)
    runtime = MlxSide(folder)
    if reference is not None:
        ref: Side = CachedTransformersSide(reference.path, "transformers (source)")
        bundle = reference.bundle
        expected = [(t.content, t.id) for t in bundle.added_tokens]
        single = single_ids_check(expected, runtime, "added tokens of the source")
        other: Side = ref
    else:
        ref = other = SandboxSide(
            read_chat_templates(folder),
            {f"{r}_token": own.special_token(r) or "" for r in ("bos", "eos", "pad", "unk")},
            "tokenizers + quantkit's sandbox",
            tokenizer_json=folder / "tokenizer.json",
        )
        bundle = own
        expected = [(t.content, t.id) for t in own.added_tokens]
        single = single_ids_check(expected, runtime, "added tokens of tokenizer.json")
        _, missing = template_token_problems(own, runtime)
        if missing:
            single = Check(single.name, False, few(missing))
    names = sorted(bundle.chat_templates)
    checks = [
        single,
        turn_end_check(bundle, runtime),
        _bos_pad(own, runtime, other),
        templates_check(folder, runtime, reference),
        render_check(ref, runtime, names),
        tokenization_check(ref, runtime),
        streaming_check(bundle, runtime),
    ]
    if isinstance(ref, CachedTransformersSide):
        ref.save()
    return checks


def _bos_pad(own: TokenizerBundle, runtime: MlxSide, other: Side) -> Check:
    check = bos_pad_check(own, runtime, other)  # type: ignore[arg-type] - same interface
    return Check(BOS_PAD, check.passed, check.evidence.replace("transformers", "mlx-lm"))


def turn_end_check(bundle: TokenizerBundle, runtime: MlxSide) -> Check:
    """The default template's turn end (of the source, or the folder's own) is one of the
    eos ids mlx-lm stops at: config.json's / generation_config.json's eos_token_id plus the
    tokenizer's eos, as mlx_lm.load collects them."""
    try:
        turn_end = template_turn_end(bundle)
    except TemplateError as exc:
        return Check(TURN_END, False, f"the default template fails: {exc}")
    stops = sorted(runtime.eos_token_ids)
    shown = ", ".join(f"{runtime.piece(i)!r} ({i})" for i in stops) or "none"
    if turn_end is None:
        if "default" not in bundle.chat_templates:
            return Check(TURN_END, True, "no chat template, so no turn end to check", False)
        return Check(
            TURN_END, False, "the default template writes no special token after an assistant "
            "reply, so there is no turn-end token to stop at",
        )  # fmt: skip
    ids = runtime.encode(turn_end)
    turn_end_id = bundle.token_id(turn_end)
    if ids != [turn_end_id]:
        return Check(
            TURN_END, False, f"the turn end {turn_end!r} (id {turn_end_id}) is {ids[:6]} in "
            "mlx-lm, not one token",
        )  # fmt: skip
    if turn_end_id not in stops:
        return Check(
            TURN_END, False, f"mlx-lm stops at {shown} but not at the turn end {turn_end!r} "
            f"(id {turn_end_id}): replies run past the end of the turn (generation_config.json "
            "or config.json eos_token_id lacks it)",
        )  # fmt: skip
    return Check(
        TURN_END, True, f"{turn_end!r} (id {turn_end_id}) ends generation; mlx-lm stops at {shown}"
    )


def templates_check(folder: Path, runtime: MlxSide, reference: Reference | None) -> Check:
    """What mlx-lm loads equals the template files; with a source, every template and
    tokenizer.json are byte-identical to the source's. (mlx-lm writes tokenizer_config.json
    through transformers, so that file is compared by what it holds, not byte for byte.)"""
    files = read_chat_templates(folder)
    problems = []
    if runtime.templates != files:
        loaded = ", ".join(sorted(runtime.templates)) or "none"
        problems.append(f"mlx-lm loads templates ({loaded}) that differ from the files")
    if reference is not None:
        wanted = reference.bundle.chat_templates
        for name in sorted(set(wanted) | set(files)):
            if name not in files:
                problems.append(f"template {name!r} of the source is missing")
            elif name not in wanted:
                problems.append(f"template {name!r} is not the source's")
            elif files[name] != wanted[name]:
                at = first_difference(files[name], wanted[name])
                problems.append(f"template {name!r} differs from the source at character {at}")
        ours, theirs = folder / "tokenizer.json", reference.path / "tokenizer.json"
        if ours.read_bytes() != theirs.read_bytes():
            problems.append("tokenizer.json is not byte-identical to the source's")
    elif "default" not in files:
        problems.append("no default chat template: mlx-lm's apply_chat_template fails")
    check = TEMPLATES_SAME if reference is not None else TEMPLATES_PRESENT
    if problems:
        return Check(check, False, few(problems))
    names = ", ".join(sorted(files)) or "none"
    same = "; byte-identical to the source's, as is tokenizer.json" if reference else ""
    return Check(check, True, f"templates {names}, as mlx-lm loads them{same}")


def streaming_check(bundle: TokenizerBundle, runtime: MlxSide) -> Check:
    """Feed the ids of a reasoning block and a tool call one by one through mlx-lm's
    streaming detokenizer: the printed text must be the text, and each Hermes tag must come
    out whole in the segment of its own token (not split, dropped or held back)."""
    vocab_tags = [t for t in HERMES_TAGS if bundle.token_id(t) is not None]
    tags = [t for t in vocab_tags if t in _STREAM_TEXT]
    if not tags:
        return Check(STREAMING, True, "the model has no <think> / <tool_call> tokens", False)
    ids = runtime.encode(_STREAM_TEXT)
    segments = runtime.stream(ids)
    kind = type(runtime.wrapper._detokenizer).__name__
    problems = []
    printed = "".join(segments)
    if printed != _STREAM_TEXT:
        at = first_difference(printed, _STREAM_TEXT)
        problems.append(
            f"the streamed text differs at character {at}: {printed[max(0, at - 15) : at + 20]!r}"
            f" instead of {_STREAM_TEXT[max(0, at - 15) : at + 20]!r}"
        )
    for tag in tags:
        tag_id = bundle.token_id(tag)
        if tag_id not in ids:
            problems.append(f"{tag!r} is not its own token (id {tag_id}) in mlx-lm")
        elif any(tag not in segments[i] for i, t in enumerate(ids) if t == tag_id):
            shown = [segments[i] for i, t in enumerate(ids) if t == tag_id]
            problems.append(f"{tag!r} (id {tag_id}) streams as {shown!r}, not whole")
    if problems:
        return Check(STREAMING, False, f"{kind}: " + few(problems))
    return Check(
        STREAMING, True, f"{', '.join(tags)} each print whole from mlx-lm's {kind}, fed "
        f"{len(ids)} ids one by one; the streamed text equals the text",
    )  # fmt: skip


def mlx_generation_check(folder: Path, *, max_new_tokens: int = REPLY_TOKENS) -> Check:
    """Load the weights in mlx-lm and answer a one-line chat greedily through
    stream_generate (mlx_lm.generate's loop, temperature 0): the reply must end at one of
    mlx-lm's eos ids. Not fatal, as for the other formats."""
    from ..formats.chat_template import foreign_render

    try:
        from mlx_lm import load, stream_generate

        model, tokenizer = load(str(folder))
    except Exception as exc:  # noqa: BLE001 - the failure is the evidence
        return Check(GENERATION, False, f"mlx-lm cannot load the model: {type(exc).__name__}: "
                     f"{exc}")  # fmt: skip
    if not tokenizer.has_chat_template:
        return Check(GENERATION, True, "no chat template", False)
    question = [{"role": "user", "content": QUESTION}]
    template = tokenizer.chat_template
    try:
        prompt = foreign_render(
            str(template.get("default", "") if isinstance(template, dict) else template),
            lambda: tokenizer.apply_chat_template(question, add_generation_prompt=True),
            question,
            add_generation_prompt=True,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
        last, pieces = None, []
        for last in stream_generate(model, tokenizer, prompt, max_tokens=max_new_tokens):
            pieces.append(last.text)
    except Exception as exc:  # noqa: BLE001
        return Check(GENERATION, False, f"mlx-lm could not generate: {exc}", False)
    if last is None:
        return Check(GENERATION, False, "mlx-lm generated nothing", False)
    text = "".join(pieces)
    if last.finish_reason == "stop":
        n = last.generation_tokens - 1
        return Check(
            GENERATION, True, f"stopped at id {last.token} after {n} tokens: {text!r}", False
        )
    return Check(
        GENERATION, False, f"no eos within {max_new_tokens} tokens (mlx-lm stops at "
        f"{sorted(tokenizer.eos_token_ids)}): {text!r}", False,
    )  # fmt: skip
