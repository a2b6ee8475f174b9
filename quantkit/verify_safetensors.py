"""The survival checks `quantkit convert` runs on every safetensors folder (BF16/FP16, FP8,
GPTQ): the whole `quantkit inspect` battery against the source (quantkit/inspection/:
added tokens as single ids, generation_config eos is the turn end, BOS/PAD, templates
byte-identical, the rendering battery and tokenization in transformers), then a greedy
reply on CPU (not fatal: compressed-tensors decompresses FP8/GPTQ to run it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import require
from .verify import GENERATION, Check, crashed_check

if TYPE_CHECKING:
    from .source import SourceModel

log = logging.getLogger(__name__)
QUESTION = "What is the capital of France?"


def check_safetensors(
    folder: Path, source: SourceModel, *, generate: bool = True, max_new_tokens: int = 32
) -> list[Check]:
    """The full inspection of a safetensors folder against its source (quantkit.inspection:
    added tokens, eos, BOS/PAD, templates, the rendering battery, tokenization), then a
    greedy reply on CPU. Never raises for the artifact: whatever goes wrong inside the
    checks becomes a failed fatal check, so convert quarantines the folder instead of
    deleting it."""
    require("transformers", "compress")
    from .inspection.reference import reference_from_source
    from .inspection.safetensors_checks import safetensors_checks

    if source.tokenizer is None:
        return [Check("special tokens single ids", True, "source has no tokenizer", False)]
    checks: list[Check] = []
    try:
        checks += safetensors_checks(folder, reference_from_source(source))
        if generate:
            checks.append(generation_check(folder, max_new_tokens=max_new_tokens))
    except Exception as exc:  # noqa: BLE001 - KeyboardInterrupt and SystemExit still stop
        checks.append(crashed_check(exc))
    return checks


def generation_check(folder: Path, *, max_new_tokens: int = 32) -> Check:
    """Greedy reply on CPU; stops at an eos id of the artifact's generation_config."""
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
        from transformers import AutoModelForCausalLM, GenerationConfig

        model = AutoModelForCausalLM.from_pretrained(str(folder), device_map=None)
        gen_config = GenerationConfig.from_pretrained(str(folder))
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        gen_config.update(max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                          top_p=None, top_k=None)  # fmt: skip
        if gen_config.pad_token_id is None:
            gen_config.pad_token_id = tokenizer.pad_token_id or _first(gen_config.eos_token_id)
        with torch.no_grad():
            out = model.generate(**inputs, generation_config=gen_config)
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


def _first(value):
    return value[0] if isinstance(value, list) else value
