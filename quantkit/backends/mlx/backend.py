"""The MLX path behind the registry: mlx-lm's own loader, quantizer and writer
(`mlx_lm.utils.load_model`, `quantize_model`, `save_model`, `save_config`; the mixed
recipes from `mlx_lm.convert.mixed_quant_predicate_builder`), the same steps as
`mlx_lm.convert`, then the source's tokenizer and template files through
artifact.tokenizer_files.

Why not `mlx_lm.convert()` itself: it also saves the tokenizer through transformers'
`save_pretrained`, which rewrites tokenizer_config.json and the templates, and writes its
own README.md; quantkit copies the source's files byte for byte instead, and the pipeline
writes the card. It also prints to stdout, which would corrupt `--json` output, so its
messages go to the log here.

Memory: mlx-lm loads the source lazily (memory-mapped safetensors), quantizes lazily and
evaluates one output shard (up to 5 GB) at a time when it saves, freeing each shard's
arrays as it goes (`donate_model`). So the build streams shard by shard on the output side;
what it cannot do is quantize one layer at a time, so a source shard is read whole when an
output shard needs one of its tensors (docs/formats.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConversionError, require
from ...formats.mlx_quants import (
    MLXQuant,
    check_group_size,
    layer_bits,
    mlx_bytes,
    mlx_quant,
    written_tensors,
)
from ...source.model import SourceModel
from ..base import BackendResult, BuildOptions

if TYPE_CHECKING:
    from ...planning.profiles import HardwareProfile
    from ...planning.target import Target

log = logging.getLogger(__name__)

WEIGHT_GLOB = "model*.safetensors"  # the only weight files mlx_lm.utils.load_model reads
# mlx-lm casts to the config's dtype; quantkit keeps 16-bit (the planner's 2 bytes).
_DTYPES = ("bfloat16", "float16")
# What artifact.tokenizer_files copies or rewrites from the source (the disk estimate).
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "chat_template.jinja", "generation_config.json")  # fmt: skip


class MLXBackend:
    """The MLX folder behind the registry: options refused in the factory, the source's
    layout and mlx-lm's support for its architecture in `prepare`."""

    def __init__(self, target: Target, hardware: HardwareProfile | None, options: BuildOptions):
        from ..gguf.imatrix.request import resolve_imatrix

        resolve_imatrix(options.gguf.imatrix, target.format, target.quant, hardware)  # refuses
        self.quant = mlx_quant(target.quant)
        self.group_size = options.mlx.group_size
        check_group_size(self.group_size)

    def prepare(self, source: SourceModel) -> None:
        preflight(source, self.quant, self.group_size)

    def estimate_bytes(self, source: SourceModel) -> int:
        return estimate_bytes(source, self.quant.name, self.group_size)

    def build(self, source: SourceModel, work: Path, progress=None) -> BackendResult:
        return make_mlx(source, self.quant.name, work, group_size=self.group_size,
                        progress=progress)  # fmt: skip


def preflight(source: SourceModel, quant: MLXQuant, group_size: int) -> None:
    """Every refusal that needs no weights: mlx-lm installed and knowing the architecture,
    an unquantized source, weight files mlx-lm will find."""
    if source.config.get("quantization_config"):
        method = source.config["quantization_config"].get("quant_method", "unknown")
        raise ConversionError(
            f"{source.name} is already quantized ({method}).",
            hint="Start from the BF16/FP16 original model.",
        )
    model_type = source.config.get("model_type", "")
    if not (_mlx_lm_dir() / "models" / f"{model_type}.py").is_file():
        raise ConversionError(
            f"mlx-lm has no model class for {model_type!r}.",
            hint="Upgrade mlx-lm, or make a GGUF for this model.",
        )
    files = sorted({t.file for t in source.tensors})
    stray = [f for f in files if not fnmatch.fnmatch(Path(f).name, WEIGHT_GLOB)]
    if stray:
        raise ConversionError(
            f"mlx-lm reads only {WEIGHT_GLOB} weight files; {source.path} keeps weights in "
            f"{', '.join(stray[:3])}.",
            hint="Rename the shards (and the index) to model-0000N-of-0000M.safetensors.",
        )
    if quant.quantized:
        kept = written_tensors(source.tensors, source.geometry.tie_word_embeddings)
        skipped = [
            t.name for t in kept if len(t.shape) == 2 and t.name.endswith(".weight")
            and t.shape[-1] % group_size
        ]  # fmt: skip
        if skipped:
            log.warning(
                "%d layers stay 16-bit: their width is not a multiple of group size %d "
                "(e.g. %s)", len(skipped), group_size, skipped[0],
            )  # fmt: skip
        if not layer_bits(quant, kept, group_size):
            raise ConversionError(
                f"Group size {group_size} divides no layer of {source.name}; {quant.name} "
                "would quantize nothing.",
                hint="Use --mlx-group-size 32 or 64.",
            )


def _mlx_lm_dir() -> Path:
    """mlx-lm's package folder, found without importing it (importing mlx_lm imports
    transformers: seconds that a dry run or a refusal should not pay)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mlx_lm")
    except (ImportError, ValueError):  # ValueError: a module without a spec (tests' stubs)
        spec = None
    if spec is None or not spec.submodule_search_locations:
        # Not findable: importing says why (MissingDependencyError names the extra).
        return Path(require("mlx_lm", "mlx").__path__[0])
    return Path(list(spec.submodule_search_locations)[0])


def estimate_bytes(source: SourceModel, quant: str, group_size: int) -> int:
    """The folder's size: the weights as mlx-lm writes them (formats.mlx_quants, the
    planner's count) plus the tokenizer and template files copied from the source."""
    weights = mlx_bytes(
        source.tensors, quant, group_size, tied=source.geometry.tie_word_embeddings
    )
    folder = source.path
    copied = [folder / n for n in _COPIED] + list(folder.glob("additional_chat_templates/*"))
    extra = sum(p.stat().st_size for p in copied if p.is_file())
    return weights + extra + 64 * 1024  # config.json and the index, written by mlx-lm


def make_mlx(
    source: SourceModel,
    quant: str,
    work: Path,
    *,
    group_size: int = 64,
    progress=None,
) -> BackendResult:
    """Write an MLX folder into `work`: weights and config.json from mlx-lm, the
    tokenizer, templates and generation config copied from the source."""
    from ...artifact.tokenizer_files import write_tokenizer_files

    spec = mlx_quant(quant)
    check_group_size(group_size)
    preflight(source, spec, group_size)
    require("mlx.core", "mlx")  # mlx-lm present but not mlx's native build: say which extra
    require("mlx_lm.utils", "mlx")

    def step(stage: str, done: int) -> None:
        if progress is not None:
            progress(stage, done, 3)

    step("loading the source for mlx-lm", 0)
    model, config = _load(source.path)
    dtype = _cast(model, config, spec)
    if spec.quantized:
        step(f"quantizing to MLX {spec.name}", 1)
        model, config = _quantize(model, config, spec, group_size)
    step(f"writing MLX {spec.name} ({dtype})", 2)
    _save(model, config, work)
    write_tokenizer_files(source, work)
    step(f"writing MLX {spec.name} ({dtype})", 3)
    from ..safetensors.backend import folder_records

    records = folder_records(work, "mlx", spec.name)
    manifest: dict[str, Any] = {
        "mlx": {
            "quant": spec.name,
            "bits": spec.bits,
            "recipe": spec.recipe,
            "high_bits": spec.high_bits,  # a recipe's bits for v_proj/down_proj/lm_head
            "group_size": group_size if spec.quantized else None,
            "mode": "affine" if spec.quantized else None,
            "dtype": dtype,
            "mlx_lm": _version("mlx-lm"),
            "mlx": _version("mlx"),
        }
    }
    return BackendResult(work, records, manifest=manifest)


@contextlib.contextmanager
def _quiet_stdout():
    """mlx-lm prints its progress; keep stdout clean for `--json` and log it instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        log.info("mlx-lm: %s", line)


def _load(path: Path):
    from mlx_lm.utils import load_model

    with _quiet_stdout():
        return load_model(Path(path), lazy=True)


def _cast(model, config: dict[str, Any], spec: MLXQuant) -> str:
    """mlx_lm.convert's dtype step: every floating parameter to the config's dtype, here
    always a 16-bit one (BF16 for the BF16 quant and for float32 sources)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    dtype = config.get("torch_dtype") or config.get("dtype")
    if spec.name == "BF16" or dtype not in _DTYPES:
        dtype = "bfloat16"
    target = getattr(mx, dtype)
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(key, value):
        if cast_predicate(key) and mx.issubdtype(value.dtype, mx.floating):
            return value.astype(target)
        return value

    model.update(tree_map_with_path(set_dtype, model.parameters()))
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = dtype
    return dtype


def _quantize(model, config: dict[str, Any], spec: MLXQuant, group_size: int):
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import quantize_model

    predicate = (
        mixed_quant_predicate_builder(spec.recipe, model, group_size) if spec.recipe else None
    )
    with _quiet_stdout():
        return quantize_model(
            model, config, group_size, spec.bits, mode="affine", quant_predicate=predicate
        )


def _save(model, config: dict[str, Any], work: Path) -> None:
    from mlx_lm.utils import save_config, save_model

    with _quiet_stdout():
        save_model(work, model, donate_model=True)
        save_config(config, config_path=work / "config.json")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
