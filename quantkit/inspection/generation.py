"""The one check that loads the weights: a short greedy chat reply must stop at the turn end,
in llama.cpp for a GGUF and in transformers (on CPU) for a safetensors folder."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..formats.chat_template import TemplateError, foreign_render, render
from ..formats.gguf_read import chat_template_key
from ..planning.cost import REPLY_TOKENS
from .check import GENERATION, Check

if TYPE_CHECKING:
    from ..source.model import SourceModel

log = logging.getLogger(__name__)
QUESTION = "What is the capital of France?"
GENERATION_KEEP_BYTES = 1 << 30
SPILL_SPARE_BYTES = 1 << 30  # left free on the disk after the decompressed layers


def gguf_generation_check(path: Path, reference, max_new_tokens: int = REPLY_TOKENS) -> Check:
    """Load the weights (the only check that does) and let llama.cpp answer a one-line chat
    greedily; `reference` (an inspection Reference or None) supplies the template. A file
    whose weights llama.cpp cannot load fails (fatal); a template that refuses the
    question fails too (not fatal: the rendering checks report the template itself)."""
    from ..runtime import cpu
    from ..runtime.llama_cpp import open_llama, silence_llama_cpp

    silence_llama_cpp()
    try:
        llm = open_llama(path, n_ctx=512, n_threads=min(2, cpu.threads()), verbose=False,
                         seed=0)  # fmt: skip
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
        template = llm.metadata.get(chat_template_key("default"))
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


def generation_check(folder: Path, *, max_new_tokens: int = REPLY_TOKENS) -> Check:
    """Greedy reply on CPU, in the folder's own dtype, its decoder layers streamed from the
    shards (quantkit.source.streamed_model: memory bounded by a layer, each layer read
    again for every token, the first GENERATION_KEEP_BYTES of them kept); stops at an eos id
    of the artifact's generation_config."""
    from transformers import AutoTokenizer

    name = GENERATION
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - the failure is the evidence
        return Check(name, False, f"transformers cannot load the tokenizer: {exc}", False)
    if not tokenizer.chat_template:
        return Check(name, True, "no chat template", False)
    try:
        import torch
        from transformers import GenerationConfig

        from ..source.streamed_model import open_streamed

        question = [{"role": "user", "content": QUESTION}]
        template = tokenizer.chat_template
        inputs = foreign_render(  # within the render limits, as every rendering
            str(template.get("default", "") if isinstance(template, dict) else template),
            lambda: tokenizer.apply_chat_template(
                question, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ),
            question,
            add_generation_prompt=True,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
        streamed = open_streamed(folder, keep_bytes=GENERATION_KEEP_BYTES)
        model = streamed.model
        gen_config = GenerationConfig.from_pretrained(str(folder))
        gen_config.update(max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                          top_p=None, top_k=None)  # fmt: skip
        if gen_config.pad_token_id is None:
            gen_config.pad_token_id = tokenizer.pad_token_id or _first(gen_config.eos_token_id)
        with torch.no_grad(), _spill_folder(folder, streamed) as spill:
            streamed.spill_to(spill)
            out = model.generate(**inputs, generation_config=gen_config)
        streamed.close()
    except Exception as exc:  # noqa: BLE001 - the evidence is the failure itself
        log.debug("generation check failed", exc_info=True)
        return Check(name, False, f"transformers could not generate: {exc}", False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = gen_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    text = tokenizer.decode([t for t in new if t not in eos_ids])
    if new and new[-1] in eos_ids:
        return Check(
            name, True, f"stopped at id {new[-1]} after {len(new) - 1} tokens: {text!r}", False
        )
    return Check(name, False, f"no eos within {max_new_tokens} tokens: {text!r}", False)


@contextlib.contextmanager
def _spill_folder(folder: Path, streamed):
    """A temporary folder beside `folder` for its decompressed layers, when it is compressed
    and the disk has room for them (else None: each token decompresses every layer again,
    slowly but in the same memory); deleted afterwards, whatever happens."""
    if not streamed.compressed():
        yield None
        return
    need = streamed.layer_bytes()
    if shutil.disk_usage(folder.parent).free < need + SPILL_SPARE_BYTES:
        log.info("no room for %d bytes of decompressed layers: generating without", need)
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=".quantkit-layers-", dir=folder.parent) as tmp:
        yield Path(tmp)


def _first(value):
    return value[0] if isinstance(value, list) else value
