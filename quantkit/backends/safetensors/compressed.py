"""FP8 and GPTQ W4A16 through llmcompressor, saved in the compressed-tensors format that
transformers (CPU included) and vLLM load.

Schemes (the rows of formats.schemes with an llmcompressor preset; weights of every
decoder Linear; lm_head and the embeddings stay unquantized):
- FP8_DYNAMIC: FP8 E4M3 weights with one scale per output channel, activations quantized
  per token at run time. Needs no data.
- FP8: FP8 weights and activations with one static scale per tensor each; the activation
  scales come from calibration data.
- W4A16: GPTQ, symmetric int4 weights with one scale per `group_size` input columns,
  activations in 16 bits. Needs calibration data.

FP8_DYNAMIC needs no model: it is made tensor by tensor, in the files llmcompressor's
model_free_ptq writes (`quantize_shard_by_shard`, module model_free). For the others, the
model is loaded with compressed-tensors' offloaded loading (CPU first, disk beyond the
free RAM), and llmcompressor's sequential pipeline onloads one decoder layer at a time for
calibration, so the accelerator (or CPU) holds one layer, its activations and, for GPTQ,
one float32 Hessian of in x in per Linear of that layer.

NaN and infinity are counted on the loaded parameters before oneshot (`check_finite`):
transformers reads the shards itself, so this is the first place quantkit sees the
weights. For a model loaded into RAM it is one pass over memory on the bits (about 10 GB/s
on one core: under 2 s for 8B); parameters compressed-tensors offloaded
to disk are read from disk once more, one at a time, as oneshot will read them again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConversionError, require
from ...formats.nonfinite import NonFiniteTally
from ...formats.schemes import SAFETENSORS_SCHEMES, SafetensorsScheme
from ...source.model import SourceModel
from .export import DEFAULT_MAX_SHARD_SIZE, count_nonfinite_tensor
from .model_free import quantize_tensor_by_tensor

log = logging.getLogger(__name__)

IGNORE = ("lm_head",)  # Embeddings are not Linear, so targets=["Linear"] skips them.
RAM_RESERVE = 5 * 10**9  # what compressed-tensors keeps free when it offloads


# The schemes llmcompressor makes: formats.schemes' rows with a preset name.
SCHEMES: dict[str, SafetensorsScheme] = {
    name: s for name, s in SAFETENSORS_SCHEMES.items() if s.llmcompressor is not None
}


def compressed_scheme(quant: str) -> SafetensorsScheme:
    key = quant.upper()
    if key not in SCHEMES:
        raise ConversionError(
            f"Unknown compressed-tensors scheme {quant!r}.",
            hint=f"Choose one of: {', '.join(SCHEMES)}.",
        )
    return SCHEMES[key]


def w4a16_group(group_size: int, bits: int = SCHEMES["W4A16"].weight_bits) -> dict[str, Any]:
    """The config group of int4 symmetric group-wise weights (llmcompressor's W4A16
    preset with our group size)."""
    weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group"}
    return {"group_0": {"targets": ["Linear"], "weights": {**weights, "group_size": group_size}}}


def build_recipe(
    quant: str,
    *,
    group_size: int = 128,
    actorder: bool = False,
    dampening: float = 0.01,
    method: str = "gptq",
    ignore: tuple[str, ...] = IGNORE,
):
    """The llmcompressor modifier for a scheme. `method="rtn"` gives plain round-to-nearest
    W4A16 (QuantizationModifier) with the same groups, the baseline GPTQ must beat."""
    scheme = compressed_scheme(quant)
    _import_llmcompressor()
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if not scheme.grouped:
        return QuantizationModifier(
            targets="Linear", scheme=scheme.llmcompressor, ignore=list(ignore)
        )
    groups = w4a16_group(group_size, scheme.weight_bits)
    if method == "rtn":
        return QuantizationModifier(config_groups=groups, ignore=list(ignore))
    if not 0 < dampening < 1:
        raise ConversionError(
            f"GPTQ dampening must lie between 0 and 1, not {dampening}.",
            hint="0.01 is the usual value; raise it (0.05-0.1) if Hessians fail to invert.",
        )
    return GPTQModifier(
        config_groups=groups,
        ignore=list(ignore),
        actorder="static" if actorder else None,
        dampening_frac=dampening,
    )


def quantize_model(
    source: SourceModel,
    quant: str,
    work: Path,
    *,
    calibration=None,
    group_size: int = 128,
    actorder: bool = False,
    dampening: float = 0.01,
    method: str = "gptq",
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    quantize_lm_head: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    shard_by_shard: bool | None = None,
) -> None:
    """Load `source`, run llmcompressor's oneshot and save the compressed model (weights,
    config.json with quantization_config, recipe.yaml) into `work`; a data-free scheme
    shard by shard instead (`shard_by_shard=None`: whenever `is_data_free`; False forces
    oneshot, which the tests compare it with)."""
    scheme = compressed_scheme(quant)
    if scheme.needs_data and method != "rtn" and not calibration:
        raise ConversionError(
            f"{scheme.name} needs calibration data and none was given.",
            hint="Pass a calibration set (quantkit.calibration.sets.load_calibration).",
        )
    # The embeddings are never quantized (the schemes target Linear layers); lm_head only
    # when asked: it is the most sensitive Linear and a small share of the weights.
    ignore = tuple(n for n in IGNORE if n != "lm_head") if quantize_lm_head else IGNORE
    recipe = build_recipe(
        quant,
        group_size=group_size,
        actorder=actorder,
        dampening=dampening,
        method=method,
        ignore=ignore,
    )
    if shard_by_shard is None:
        shard_by_shard = is_data_free(scheme.name, quantize_lm_head)
    if shard_by_shard:
        quantize_shard_by_shard(source, recipe, work, progress=progress)
        return
    offload_dir = work.with_name(work.name + ".offload")
    try:
        _stage(progress, f"loading {source.name}", 0)
        model = load_offloaded(source, offload_dir)
        check_finite(model)
        _stage(progress, f"llmcompressor {scheme.name}", 0)
        run_oneshot(model, recipe, calibration if method != "rtn" else None)
        _stage(progress, "saving compressed-tensors", 0)
        with warnings.catch_warnings():  # about offloaded modules: expected, see load
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded")
            model.save_pretrained(work, save_compressed=True, max_shard_size=max_shard_size)
        _stage(progress, "saving compressed-tensors", 1)
    finally:
        shutil.rmtree(offload_dir, ignore_errors=True)


def is_data_free(scheme: str, quantize_lm_head: bool) -> bool:
    """FP8_DYNAMIC needs no data and no model: it is made shard by shard. A quantized
    lm_head goes through oneshot, which unties a tied one."""
    return scheme == "FP8_DYNAMIC" and not quantize_lm_head


def quantize_shard_by_shard(source: SourceModel, recipe, work: Path, *, progress=None) -> None:
    """FP8_DYNAMIC without loading the model: llmcompressor's `model_free_ptq` files, made
    one tensor at a time (`model_free.quantize_tensor_by_tensor`), so memory is bounded by
    a tensor, not a shard nor the model. The tensors hold oneshot's values (oneshot turns a
    source's -0 into +0; this keeps it), and config.json's quantization_config and
    recipe.yaml are the ones oneshot writes (tests/backends/safetensors/test_compressed.py
    compares the two paths); the output shards follow the source's (max_shard_size does
    not apply)."""
    _import_llmcompressor()
    from llmcompressor.recipe import Recipe

    config = recipe.resolve_quantization_config()
    quantize_tensor_by_tensor(source, model_free_config(source, config), work, progress=progress)
    _record_oneshot_config(work / "config.json", config)
    (work / "recipe.yaml").write_text(Recipe.from_modifiers([recipe]).yaml(), encoding="utf-8")


def model_free_config(source: SourceModel, config):
    """The recipe's QuantizationConfig as model_free_ptq runs it: it matches tensors by
    name, and "Linear" matches every weight, so the embeddings (not Linear in the model)
    are left out by their module names; then model_free_ptq's own validation."""
    from llmcompressor.entrypoints.model_free.validate import validate_config

    skip = [f"re:^{re.escape(name)}$" for name in _weights_not_in_linear(source)]
    return validate_config(config.model_copy(update={"ignore": [*config.ignore, *skip]}), None, ())


def _weights_not_in_linear(source: SourceModel) -> list[str]:
    """Module names whose `.weight` is in the checkpoint but which are not nn.Linear
    (embeddings): the architecture instantiated on the meta device, no weight read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(source.path), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    stored = {t.name for t in source.tensors}
    return [
        name
        for name, module in model.named_modules()
        if f"{name}.weight" in stored
        and not isinstance(module, torch.nn.Linear)
        and getattr(module, "weight", None) is not None
        and module.weight.ndim == 2
    ]


def _record_oneshot_config(config_json: Path, config) -> None:
    """config.json's quantization_config as oneshot saves it: the recipe's ignore list (the
    embeddings were never Linear targets there) and an empty sparsity_config."""
    data = json.loads(config_json.read_text(encoding="utf-8"))
    recorded = data["quantization_config"]
    recorded["ignore"] = list(config.ignore)
    recorded["sparsity_config"] = {}
    config_json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_offloaded(source: SourceModel, offload_dir: Path):
    """The source model in its own dtype on the CPU; when it does not fit the free RAM,
    compressed-tensors' `auto_offload` keeps what fits on the CPU and the rest on disk.
    llmcompressor's pipelines then onload one layer at a time to the accelerator."""
    _import_llmcompressor()
    from compressed_tensors.offload import load_offloaded_model
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": "auto", "trust_remote_code": False, "device_map": None}
    if not fits_in_ram(source):
        log.info("%s is larger than the free RAM: offloading to %s", source.name, offload_dir)
        kwargs.update(device_map="auto_offload", offload_folder=str(offload_dir))
    with load_offloaded_model():
        return AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)


def check_finite(model) -> None:
    """Raise NonFiniteWeightsError when a parameter of the loaded model holds NaN or
    infinity (offloaded ones are onloaded one at a time, then dropped)."""
    tally = NonFiniteTally()
    for name, param in model.named_parameters():
        count_nonfinite_tensor(tally, name, param.detach())
    tally.raise_if_any()


def fits_in_ram(source: SourceModel, reserve: int = RAM_RESERVE) -> bool:
    """Whether the weights fit the available RAM with `reserve` bytes to spare (for
    activations, Hessians and the saving step)."""
    import psutil

    return source.weight_bytes + reserve < psutil.virtual_memory().available


def run_oneshot(model, recipe, calibration=None) -> None:
    """llmcompressor's oneshot; with data, the sequential pipeline (layer by layer)."""
    _import_llmcompressor()
    from llmcompressor import oneshot

    kwargs: dict[str, Any] = {}
    if calibration is not None:
        dataset = calibration.to_hf_dataset()
        kwargs = {
            "dataset": dataset,
            "num_calibration_samples": len(dataset),
            "max_seq_length": max(len(ids) for ids in dataset["input_ids"]),
            "shuffle_calibration_samples": False,
            "batch_size": 1,
        }
    try:
        oneshot(model=model, recipe=recipe, **kwargs)
    except ValueError as exc:
        raise ConversionError(f"llmcompressor refused the model: {exc}") from exc


def _stage(progress, stage: str, done: int) -> None:
    if progress is not None:
        progress(stage, done, 1)


_LLMCOMPRESSOR_READY = False
_LOG_DISABLED = "LLM_COMPRESSOR_LOG_DISABLED"
# Expected on CPU-only machines and after our own tokenization: not the user's concern.
_NOT_WARNINGS = ("No accelerator available", "Disabling tokenizer parallelism")


def _import_llmcompressor() -> None:
    """Import llmcompressor once and send its loguru output (INFO on stdout by default,
    which would break `--json`) to Python logging instead."""
    global _LLMCOMPRESSOR_READY
    if _LLMCOMPRESSOR_READY:
        return
    # Its import configures loguru from the environment and logs; keep that quiet, then
    # honour a user's own LLM_COMPRESSOR_LOG_* settings when configuring for real.
    previous = os.environ.get(_LOG_DISABLED)
    os.environ[_LOG_DISABLED] = "true"
    try:
        require("llmcompressor", "compress")
    finally:
        if previous is None:
            del os.environ[_LOG_DISABLED]
        else:
            os.environ[_LOG_DISABLED] = previous
    from llmcompressor.logger import LoggerConfig, configure_logger
    from loguru import logger

    configure_logger(LoggerConfig(console_log_level=None))
    logger.add(_to_logging, level="DEBUG", format="{message}")
    _LLMCOMPRESSOR_READY = True


def _to_logging(message) -> None:
    record = message.record
    level = record["level"].no
    if record["level"].name == "METRIC" or record["message"].startswith(_NOT_WARNINGS):
        level = logging.DEBUG
    logging.getLogger(record["name"] or "llmcompressor").log(level, record["message"])
