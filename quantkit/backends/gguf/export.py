"""HF safetensors folder -> GGUF (F32, F16, BF16 or Q8_0), streaming one block at a time.

The layout and metadata follow llama.cpp's own convert_hf_to_gguf.py, so that the file is
interchangeable with one it makes (tests/backends/gguf/test_reference_parity.py checks tensor
by tensor), except where quantkit's documented token-type policy decides otherwise.

NaN and infinity in the source are counted while the tensors stream (tensors.py); after the
first damaged block the rest are only read and counted, not converted or written, then the
file is removed and NonFiniteWeightsError names the tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ...errors import ConversionError, SourceModelError, UnsupportedArchitectureError
from ...formats.nonfinite import NonFiniteTally
from ...formats.quants import gguf_quant
from ...formats.safetensors_index import shard_files
from ...formats.tokens import TokenTypePolicy
from ...source.model import SourceModel
from ...version import __version__
from .arch import ARCHITECTURES, ArchSpec, arch_name, llama3_rope_factors, qk_heads, write_hparams
from .tensors import SourceTensor, converted_blocks, index_source_tensors, output_nbytes
from .vocab import GGUFVocab, build_vocab

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
_DIRECT_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}
# Tensors that are dropped, as llama.cpp's converter drops them (recomputed at load time).
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    out_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> count
    vocab: GGUFVocab | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TensorJob:
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Q
    nbytes: int
    source: SourceTensor | None  # None for generated tensors
    heads: int | None = None
    generated: np.ndarray | None = None


ProgressFn = Callable[[int, int], None]  # (done, total) tensors


@dataclass(frozen=True)
class ExportPlan:
    """What a GGUF of `source` holds before any weight is read: the architecture, the
    tokenizer block and each tensor's name, shape, type and source."""

    spec: ArchSpec
    vocab: GGUFVocab
    jobs: list[TensorJob]


def plan_export(
    source: SourceModel,
    out_type: str = "BF16",
    *,
    token_policy: TokenTypePolicy | None = None,
    pre_tokenizer: str | None = None,
) -> ExportPlan:
    spec = _arch_spec(source)
    qtype = _direct_type(out_type)
    if source.tokenizer is None:
        raise SourceModelError(
            f"{source.path} has no tokenizer.json; a GGUF must carry its tokenizer.",
        )
    vocab = build_vocab(
        source.tokenizer,
        source.geometry.vocab_size,
        source.config,
        policy=token_policy,
        pre_tokenizer=pre_tokenizer,
    )
    return ExportPlan(spec, vocab, _plan_jobs(source, spec, qtype))


def metadata_writer(source: SourceModel, plan: ExportPlan, out_file: Path | None, ftype: int):
    """A GGUFWriter holding the file's metadata (architecture, hyperparameters, tokenizer),
    no tensors yet (`out_file` None: one that only holds them)."""
    writer = gguf.GGUFWriter(out_file, arch_name(plan.spec))
    _write_metadata(writer, source, plan.spec, plan.vocab, ftype)
    return writer


def export_gguf(
    source: SourceModel,
    out_file: Path,
    *,
    out_type: str = "BF16",
    token_policy: TokenTypePolicy | None = None,
    pre_tokenizer: str | None = None,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Write `source` as a GGUF file of type F32, F16, BF16 or Q8_0. Raises
    NonFiniteWeightsError, leaving no file, when the source holds NaN or infinity."""
    plan = plan_export(source, out_type, token_policy=token_policy, pre_tokenizer=pre_tokenizer)
    writer = metadata_writer(source, plan, out_file, gguf_quant(out_type).ftype)
    for job in plan.jobs:
        writer.add_tensor_info(
            job.gguf_name, job.shape, np.dtype(np.float32), job.nbytes, raw_dtype=job.qtype
        )
    tally = NonFiniteTally()
    write_tensors(writer, out_file, plan.jobs, lambda job: job_blocks(job, tally), progress)
    if tally:
        out_file.unlink(missing_ok=True)
        tally.raise_if_any()
    counts: dict[str, int] = {}
    for job in plan.jobs:
        counts[job.qtype.name] = counts.get(job.qtype.name, 0) + 1
    return ExportResult(out_file, out_type.upper(), counts, plan.vocab)


def _arch_spec(source: SourceModel) -> ArchSpec:
    spec = ARCHITECTURES.get(source.geometry.architecture)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"No GGUF writer for {source.geometry.architecture!r}.",
            hint=f"Supported: {', '.join(ARCHITECTURES)}.",
        )
    return spec


def _direct_type(out_type: str) -> Q:
    key = out_type.upper()
    if key not in _DIRECT_TYPES:
        raise ConversionError(
            f"{out_type} is not written directly; quantkit writes {', '.join(_DIRECT_TYPES)} "
            "and makes the other types with llama.cpp's quantizer from a BF16 file.",
        )
    return _DIRECT_TYPES[key]


def _plan_jobs(source: SourceModel, spec: ArchSpec, qtype: Q) -> list[TensorJob]:
    geo = source.geometry
    name_map = gguf.get_tensor_name_map(spec.gguf_arch, geo.num_layers)
    jobs: list[TensorJob] = []
    rope = llama3_rope_factors(geo.rope, geo.head_dim)
    if rope is not None:
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        jobs.append(TensorJob(rope_name, rope.shape, Q.F32, rope.nbytes, None, generated=rope))
    tensors = index_source_tensors(shard_files(source.path))
    for hf_name, tensor in tensors.items():
        if hf_name.endswith(_SKIPPED_SUFFIXES):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConversionError(
                f"Tensor {hf_name} has no GGUF name for {spec.hf_architecture}.",
                hint="The checkpoint has tensors this architecture does not define; it may be "
                "a variant quantkit does not support.",
            )
        tensor_qtype = _tensor_type(gguf_name, tensor, qtype)
        jobs.append(
            TensorJob(
                gguf_name,
                tensor.shape,
                tensor_qtype,
                output_nbytes(tensor.shape, tensor_qtype),
                tensor,
                heads=qk_heads(spec, hf_name, geo),
            )
        )
    return jobs


def _tensor_type(gguf_name: str, tensor: SourceTensor, wanted: Q) -> Q:
    # llama.cpp computes norms and other vectors in F32; it expects them stored so.
    if len(tensor.shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32
    if not gguf_name.endswith(".weight"):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if tensor.shape[-1] % block:
        log.warning(
            "%s: %d columns are not a multiple of %d; writing F16",
            gguf_name,
            tensor.shape[-1],
            block,
        )
        return Q.F16
    return wanted


def _write_metadata(
    writer: gguf.GGUFWriter, source: SourceModel, spec: ArchSpec, vocab: GGUFVocab, ftype: int
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    writer.add_quantized_by(f"quantkit {__version__}")
    if source.repo_id:
        writer.add_source_repo_url(f"https://huggingface.co/{source.repo_id}")
    write_hparams(writer, spec, source.geometry, source.config, ftype)
    _write_sampling_defaults(writer, source)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for role, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_sep is not None:
        writer.add_add_sep_token(vocab.add_sep)
    if vocab.chat_templates:
        writer.add_chat_template(
            [{"name": name, "template": text} for name, text in vocab.chat_templates.items()]
        )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_sampling_defaults(writer: gguf.GGUFWriter, source: SourceModel) -> None:
    """The model author's sampling defaults from generation_config.json, which llama.cpp
    uses when the user sets none (as llama.cpp's converter records them)."""
    gen = source.tokenizer.generation_config if source.tokenizer else {}
    setters = {
        "temperature": writer.add_sampling_temp,
        "top_p": writer.add_sampling_top_p,
        "top_k": writer.add_sampling_top_k,
        "min_p": writer.add_sampling_min_p,
    }
    for key, setter in setters.items():
        if gen.get(key) is not None:
            setter(gen[key])


def write_tensors(
    writer: gguf.GGUFWriter,
    out_file: Path,
    jobs: list[TensorJob],
    blocks: Callable[[TensorJob], Iterator[bytes]],
    progress: ProgressFn | None,
) -> None:
    """The header, then each job's data from `blocks(job)` in the order of `jobs` (the
    order of the writer's tensor infos), each padded to the alignment. A job that yields
    nothing (the source is damaged, the file will be removed) is not checked."""
    writer.write_header_to_file(out_file)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None and len(writer.fout) == 1
    fout = writer.fout[0]
    expected = {name: info.nbytes for name, info in writer.tensors[0].items()}
    for done, job in enumerate(jobs, start=1):
        writer.write_padding(fout, fout.tell())
        written = 0
        for chunk in blocks(job):
            fout.write(chunk)
            written += len(chunk)
        if written and written != expected[job.gguf_name]:
            raise ConversionError(
                f"{job.gguf_name}: wrote {written} bytes, expected {expected[job.gguf_name]}."
            )
        writer.write_padding(fout, written)
        if progress is not None:
            progress(done, len(jobs))
    writer.close()


def job_blocks(job: TensorJob, tally: NonFiniteTally) -> Iterator[bytes]:
    """The job's data in its own type, block by block (none once the source is known
    damaged)."""
    if job.generated is not None:
        yield job.generated.astype(np.float32).tobytes()
        return
    assert job.source is not None
    yield from converted_blocks(job.source, job.qtype, job.heads, tally)
