"""The GGUF tokenizer block: tokens, token types, merges, special ids, chat templates.

Token-type policy (docs/formats.md): turn markers and other special added tokens are
CONTROL, so runtimes hide them and stop on them; the Hermes reasoning and tool tags are
USER_DEFINED, so runtimes print them and tool-call parsers see them, whatever the source
tokenizer marks them as. EOS and EOT are the turn-end token that the default chat template
actually writes after an assistant reply (`<|im_end|>` for ChatML, `<|eot_id|>` for the
Llama-3 format), because that is where generation has to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import SourceModelError
from ...formats.chat_template import TemplateError
from ...formats.tokens import TokenType, TokenTypePolicy
from ...source.tokenizer_bundle import TokenizerBundle, template_turn_end
from .pretokenizers import check_pre_tokenizer_name, detect_pre_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # bos, eos, eot, unk, pad, sep ...
    add_bos: bool
    add_eos: bool
    add_sep: bool | None  # None: the tokenizer says nothing about pairs
    chat_templates: dict[str, str]


def build_vocab(
    bundle: TokenizerBundle,
    vocab_size: int,
    config: Mapping,
    *,
    policy: TokenTypePolicy | None = None,
    pre_tokenizer: str | None = None,
) -> GGUFVocab:
    policy = policy or TokenTypePolicy()
    model = bundle.tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise SourceModelError(
            f"The tokenizer model is {model.get('type')!r}; quantkit writes byte-level BPE "
            "tokenizers (Llama 3, Qwen, ChatML models).",
        )
    tokens, types = _tokens_and_types(bundle, vocab_size, policy)
    special_ids = _special_ids(bundle, config)
    bos_id = special_ids.get("bos")
    if pre_tokenizer is not None:
        pre = check_pre_tokenizer_name(pre_tokenizer)
    else:
        pre = detect_pre_tokenizer(bundle.folder / "tokenizer.json", bos_id)
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=_merges(model.get("merges") or []),
        pre=pre,
        special_ids=special_ids,
        add_bos=_adds_special(bundle, "bos"),
        add_eos=_adds_special(bundle, "eos"),
        add_sep=_adds_separator(bundle),
        chat_templates=dict(bundle.chat_templates),
    )


def _tokens_and_types(
    bundle: TokenizerBundle, vocab_size: int, policy: TokenTypePolicy
) -> tuple[list[str], list[int]]:
    by_id: dict[int, tuple[str, TokenType]] = {
        idx: (text, TokenType.NORMAL)
        for text, idx in bundle.tokenizer_json["model"]["vocab"].items()
    }
    for added in bundle.added_tokens:
        by_id[added.id] = (added.content, policy.type_of(added.content, added.special))
    if by_id and max(by_id) >= vocab_size:
        raise SourceModelError(
            f"The tokenizer has token id {max(by_id)} but config.json says vocab_size "
            f"{vocab_size}.",
            hint="The tokenizer and the weights do not belong together; check the model files.",
        )
    tokens: list[str] = []
    types: list[int] = []
    for idx in range(vocab_size):
        text, kind = by_id.get(idx, (f"[PAD{idx}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


def _merges(raw: list) -> list[str]:
    if not raw or isinstance(raw[0], str):
        return list(raw)
    # tokenizers >= 0.20 stores pairs; llama.cpp wants "a b" with spaces inside a part
    # shifted to U+0120+ so the separator stays unambiguous (as gguf-py's SpecialVocab does).
    return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in raw]


def _special_ids(bundle: TokenizerBundle, config: Mapping) -> dict[str, int]:
    ids: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        content = bundle.special_token(role)
        token_id = bundle.token_id(content) if content else None
        if token_id is None and isinstance(config.get(f"{role}_token_id"), int):
            token_id = config[f"{role}_token_id"]
        if token_id is not None:
            ids[role] = token_id
    try:
        turn_end = template_turn_end(bundle)
    except TemplateError as exc:  # the checks report the template; the GGUF keeps the EOS
        log.warning("%s", exc)
        turn_end = None
    if turn_end is not None:
        turn_end_id = bundle.token_id(turn_end)
        if turn_end_id is not None:
            if ids.get("eos") != turn_end_id:
                log.info("EOS set to the template's turn end %s (id %d)", turn_end, turn_end_id)
            ids["eos"] = turn_end_id
            ids["eot"] = turn_end_id
    return ids


def _adds_special(bundle: TokenizerBundle, role: str) -> bool:
    """Whether the tokenizer adds BOS/EOS itself, read as llama.cpp's converter reads it:
    the post-processor first, then tokenizer_config.json's add_<role>_token."""
    content = bundle.special_token(role)
    post = bundle.tokenizer_json.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single", [])
        edge = single[0] if role == "bos" else single[-1]
        if len(single) > 1:
            return edge.get("SpecialToken", {}).get("id") == content
    explicit = bundle.tokenizer_config.get(f"add_{role}_token")
    return bool(explicit) if isinstance(explicit, bool) else False


def _adds_separator(bundle: TokenizerBundle) -> bool | None:
    """Whether a sentence pair gets a separator (sep or eos) between A and B, from the
    post-processor's pair template, as llama.cpp's converter records it."""
    post = bundle.tokenizer_json.get("post_processor") or {}
    separators = {bundle.special_token("sep"), bundle.special_token("eos")} - {None}
    for proc in post.get("processors", [post]):
        pair = proc.get("pair") if proc.get("type") == "TemplateProcessing" else None
        if not pair:
            continue
        ids = [p.get("Sequence", {}).get("id") or p.get("SpecialToken", {}).get("id") for p in pair]
        if "A" not in ids or "B" not in ids:
            return False
        between = ids[ids.index("A") + 1 : ids.index("B")]
        return any(token in separators for token in between)
    return None
