"""The survival checks `quantkit convert` runs on every GGUF: the whole `quantkit inspect`
battery against the source (quantkit/inspection/), then a short greedy reply in llama.cpp.

Check is the record every check returns, here and in quantkit.inspection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .chat_template import TemplateError, render
from .errors import require

if TYPE_CHECKING:
    from .backends.gguf.vocab import TokenTypePolicy
    from .source import SourceModel


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    evidence: str
    fatal: bool = True  # a failed non-fatal check is reported but does not fail the convert

    def to_dict(self) -> dict:
        return asdict(self)


LOADS = "artifact loads and can be checked"
GENERATION = "greedy generation stops"


def check_gguf(
    path: Path,
    source: SourceModel,
    *,
    max_new_tokens: int = 48,
    policy: TokenTypePolicy | None = None,
) -> list[Check]:
    """The full inspection of a GGUF against its source (tokens, token types, turn end,
    BOS/PAD, templates, the rendering battery, tokenization, rope; quantkit.inspection),
    then a short greedy reply with the weights loaded. `policy` is the token-type policy
    the GGUF was written with (convert's --token-type overrides).

    Never raises for the artifact: whatever goes wrong inside the checks becomes a failed
    fatal check, so convert quarantines the artifact instead of deleting it."""
    require("llama_cpp", "gguf")
    from .inspection.gguf_checks import gguf_checks
    from .inspection.gguf_meta import gguf_files
    from .inspection.reference import reference_from_source

    if source.tokenizer is None:
        return [Check("special tokens single ids", True, "source has no tokenizer", False)]
    checks: list[Check] = []
    try:
        reference = reference_from_source(source)
        checks += gguf_checks(gguf_files(Path(path)), reference, policy=policy)
        checks.append(gguf_generation_check(Path(path), reference, max_new_tokens))
    except Exception as exc:  # noqa: BLE001 - KeyboardInterrupt and SystemExit still stop
        checks.append(crashed_check(exc))
    return checks


def crashed_check(exc: BaseException) -> Check:
    """The failed fatal check that stands for a check that crashed."""
    import logging

    logging.getLogger(__name__).debug("a check crashed", exc_info=exc)
    return Check(LOADS, False, f"the checks crashed: {type(exc).__name__}: {exc}")


def gguf_generation_check(path: Path, reference, max_new_tokens: int = 48) -> Check:
    """Load the weights (the only check that does) and let llama.cpp answer a one-line chat
    greedily; `reference` (an inspection Reference or None) supplies the template. A file
    whose weights llama.cpp cannot load fails (fatal); a template that refuses the
    question fails too (not fatal: the rendering checks report the template itself)."""
    from llama_cpp import Llama

    from .backends.gguf.quantize import silence_llama_cpp

    silence_llama_cpp()
    try:
        llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    except Exception as exc:  # noqa: BLE001 - the failure is the evidence
        return Check(
            GENERATION, False, f"llama.cpp cannot load the weights: {type(exc).__name__}: {exc}"
        )
    try:
        bundle = reference.bundle if reference is not None else None
        try:
            ids = _prompt_ids(llm, bundle)
        except TemplateError as exc:
            return Check(
                GENERATION, False, f"the chat template cannot render the question: {exc}", False
            )
        return _generation_check(llm, ids, max_new_tokens)
    finally:
        llm.close()


def chat_prompt_ids(llm, source: SourceModel) -> list[int] | None:
    """A one-question chat rendered with the source's default template, tokenized by the
    artifact's runtime; None when the source has no template."""
    return _prompt_ids(llm, source.tokenizer)


def _prompt_ids(llm, bundle) -> list[int] | None:
    """The question rendered with `bundle`'s default template (the GGUF's own when there is
    no bundle), tokenized by llama.cpp with at most one BOS."""
    if bundle is not None:
        template = bundle.chat_templates.get("default")
        bos = bundle.special_token("bos") or ""
        add_bos = bundle.add_bos
    else:
        template = llm.metadata.get("tokenizer.chat_template")
        bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        add_bos = True  # llama.cpp adds BOS only where the GGUF says so
    if template is None:
        return None
    prompt = render(
        template,
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        bos_token=bos,
    )
    # Llama-3 templates write <|begin_of_text|> themselves: never add a second BOS.
    add_bos = add_bos and not (bos and prompt.startswith(bos))
    return llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)


def _generation_check(llm, ids: list[int] | None, max_new_tokens: int) -> Check:
    import llama_cpp

    if ids is None:
        return Check(GENERATION, True, "no chat template", False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    generated: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            text = llm.detokenize(generated).decode(errors="replace")
            return Check(
                GENERATION,
                True,
                f"stopped at id {token} after {len(generated)} tokens: {text!r}",
                False,
            )
        generated.append(token)
        if len(generated) >= max_new_tokens:
            break
    text = llm.detokenize(generated).decode(errors="replace")
    # Random-weight models never stop; only a trained model's failure to stop means much.
    return Check(
        GENERATION,
        False,
        f"no end-of-generation within {max_new_tokens} tokens: {text!r}",
        False,
    )
