"""Model id or folder -> SourceModel: config, geometry, tensor inventory, tokenizer bundle.

No weights are loaded. A Hub repo id is fetched into the Hugging Face cache, only the files
quantkit needs (config, tokenizer files, generation config, safetensors shards); a download
that stops resumes on the next run (hub_download.py). With `weights=False` (what convert
asks for) the shards are not downloaded yet: their headers are read with HTTP Range
requests, so the plan, the dry run and the disk check know every tensor, and
`SourceModel.with_weights()` downloads them once those have passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import SourceModelError, UnsafeSourceError, UnsupportedArchitectureError
from ..formats.safetensors_index import (
    TensorInfo,
    index_weight_map,
    parse_header,
    shard_files,
    tensor_inventory,
    tensors_in_header,
)
from .hub_download import RemoteShard, download_snapshot, missing_bytes, remote_shards
from .tokenizer_bundle import TOKENIZER_FILES, TokenizerBundle, load_tokenizer_bundle

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen3ForCausalLM")
HUB_PATTERNS = [
    "config.json",
    "README.md",  # its front matter carries the licence the artifact inherits
    "*.safetensors",
    "model.safetensors.index.json",
    "additional_chat_templates/*.jinja",
    *TOKENIZER_FILES,
]
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass(frozen=True)
class RopeSettings:
    theta: float
    rope_type: str  # "default", "llama3", "linear", "yarn", ...
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None


@dataclass(frozen=True)
class ModelGeometry:
    architecture: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope: RopeSettings
    torch_dtype: str | None = None


@dataclass(frozen=True)
class PendingDownload:
    """The weights of a Hub source, known by their headers, not downloaded yet."""

    repo_id: str
    commit: str
    patterns: tuple[str, ...]
    missing_bytes: int  # what the download still has to fetch into the Hugging Face cache


@dataclass(frozen=True)
class SourceModel:
    path: Path
    name: str  # used in artifact file names, e.g. "Hermes-3-Llama-3.1-8B"
    config: dict[str, Any] = field(repr=False)
    geometry: ModelGeometry
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    tokenizer: TokenizerBundle | None = field(repr=False)
    repo_id: str | None = None
    revision: str | None = None  # Hub commit sha: fetched from the Hub or a cache snapshot
    content_hash: str = ""  # sha256 over config + tensor headers + tokenizer files
    download: PendingDownload | None = field(default=None, repr=False)

    @property
    def weights_here(self) -> bool:
        return self.download is None

    def with_weights(self) -> SourceModel:
        """This source with its weights on disk: a Hub source loaded with `weights=False`
        downloads its shards now (resuming), checked to be the files whose headers it
        read; any other source is returned as it is."""
        if self.download is None:
            return self
        pending = self.download
        folder = download_snapshot(pending.repo_id, pending.commit, pending.patterns)
        if content_hash(folder) != self.content_hash:
            raise SourceModelError(
                f"The files of {pending.repo_id} at {pending.commit} are not the ones whose "
                "headers were read before the download.",
                hint="Run the same command again.",
            )
        return replace(self, path=folder, download=None)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors)


def load_source(
    model: str | Path,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    require_architecture: bool = True,
    weights: bool = True,
) -> SourceModel:
    """Resolve a local folder or a Hub repo id into a SourceModel (no weights loaded).
    `weights=False`: a Hub repo's shards are left on the Hub (their headers read), for
    `SourceModel.with_weights()` to download later."""
    if not weights and not allow_pickle:
        pending = _from_hub_headers(str(model), revision)
        if pending is not None:
            return _source(*pending, trust_remote_code=trust_remote_code,
                           require_architecture=require_architecture)  # fmt: skip
    folder, repo_id, commit = _resolve_folder(str(model), revision, allow_pickle)
    config = _read_config(folder)
    _check_safety(folder, config, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if allow_pickle and not shard_files(folder):
        from .pickle_weights import safetensors_copy

        folder = safetensors_copy(folder)
    geometry = geometry_from_config(config, require_supported=require_architecture)
    tensors = tensor_inventory(folder)
    if not tensors:
        raise SourceModelError(
            f"{folder} has no *.safetensors weights.",
            hint="quantkit reads safetensors only; convert .bin weights with "
            "transformers (save_pretrained(safe_serialization=True)).",
        )
    tokenizer = load_tokenizer_bundle(folder) if (folder / "tokenizer.json").is_file() else None
    name = (repo_id.split("/")[-1] if repo_id else folder.resolve().name) or "model"
    return SourceModel(
        path=folder,
        name=name,
        config=config,
        geometry=geometry,
        tensors=tensors,
        tokenizer=tokenizer,
        repo_id=repo_id,
        revision=commit,
        content_hash=content_hash(folder),
    )


def geometry_from_config(
    config: dict[str, Any], *, require_supported: bool = True
) -> ModelGeometry:
    """Model geometry from config.json alone (transformers 4 or 5 layout)."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else ""
    if require_supported and arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Architecture {arch or '(none given)'!r} is not supported.",
            hint=f"quantkit converts {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(Hermes 3, Hermes 4 and other Llama-3.1 / Qwen3 models).",
        )
    cfg = config.get("text_config", config)
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return ModelGeometry(
            architecture=arch,
            model_type=str(cfg.get("model_type", "")),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope=rope_settings(cfg),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )
    except KeyError as exc:
        raise SourceModelError(
            f"config.json lacks {exc.args[0]!r}.",
            hint="The config is incomplete; restore it from the original model.",
        ) from exc


def rope_settings(cfg: dict[str, Any]) -> RopeSettings:
    """Read rope in both forms: transformers 5 `rope_parameters`, or transformers 4
    `rope_theta` + `rope_scaling`."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = params
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"

    def opt_float(key: str) -> float | None:
        return float(scaling[key]) if scaling.get(key) is not None else None

    orig = scaling.get("original_max_position_embeddings")
    return RopeSettings(
        theta=float(theta),
        rope_type=str(rope_type),
        factor=opt_float("factor"),
        low_freq_factor=opt_float("low_freq_factor"),
        high_freq_factor=opt_float("high_freq_factor"),
        original_max_position_embeddings=int(orig) if orig is not None else None,
    )


def content_hash(folder: Path, shards: list[RemoteShard] | None = None) -> str:
    """A cheap identity for a local model: sha256 over config, tokenizer files and the
    safetensors headers plus sizes (hashing tens of GB of weights would take minutes).
    `shards`: the headers as read from the Hub, for a folder without its weights yet (the
    same hash as once they are downloaded)."""
    digest = hashlib.sha256()
    for name in ("config.json", *TOKENIZER_FILES):
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    for name, size, header in shards_and_headers(folder) if shards is None else (
        (Path(s.path).name, s.size, s.header) for s in _in_index_order(folder, shards)
    ):
        digest.update(name.encode())
        digest.update(str(size).encode())
        digest.update(header[: 100 * 1024 * 1024])
    return digest.hexdigest()


def shards_and_headers(folder: Path):
    """(name, size, header JSON bytes) of each local shard, in shard_files order."""
    for shard in shard_files(folder):
        with shard.open("rb") as fh:
            head_len = int.from_bytes(fh.read(8), "little")
            yield shard.name, shard.stat().st_size, fh.read(min(head_len, 100 * 1024 * 1024))


def _in_index_order(folder: Path, shards: list[RemoteShard]) -> list[RemoteShard]:
    """The Hub's shards in shard_files' order: the index's files sorted, else every
    top-level *.safetensors sorted; a file the index names that the repo lacks fails as
    a local one would."""
    by_name = {s.path: s for s in shards}
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(index_weight_map(index).values()))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SourceModelError(
                f"{index} names shards the Hub repo lacks: {', '.join(missing)}.",
                hint="The repo is incomplete; ask its owner, or pass another revision.",
            )
        return [by_name[n] for n in names]
    return [by_name[n] for n in sorted(by_name) if "/" not in n]


def _from_hub_headers(model: str, revision: str | None):
    """(folder without weights, repo id, commit, tensors, hash, pending download) of a Hub
    repo id whose weights are not all in the cache yet; None for a local folder, a repo
    the Hub cannot be asked about (offline: the cache decides), or one already cached."""
    if Path(model).expanduser().exists() or not _looks_like_repo_id(model):
        return None
    listed = remote_shards(model, revision)
    if listed is None:
        return None
    commit, shards = listed
    missing = missing_bytes(model, shards)
    if not shards or missing == 0:
        return None
    metadata = [p for p in HUB_PATTERNS if p != "*.safetensors"]
    folder = download_snapshot(model, commit, metadata)
    ordered = _in_index_order(folder, shards)
    tensors = []
    for shard in ordered:
        header, _ = parse_header(f"{model}/{shard.path}", shard.header, shard.size)
        tensors.extend(tensors_in_header(header, shard.path))
    pending = PendingDownload(model, commit, tuple(HUB_PATTERNS), missing)
    return folder, model, commit, tuple(tensors), content_hash(folder, shards), pending


def _looks_like_repo_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def _source(
    folder: Path,
    repo_id: str,
    commit: str,
    tensors: tuple[TensorInfo, ...],
    digest: str,
    pending: PendingDownload,
    *,
    trust_remote_code: bool,
    require_architecture: bool,
) -> SourceModel:
    """A Hub source whose weights are still on the Hub (load_source's checks, the same
    inventory and hash as after the download)."""
    config = _read_config(folder)
    _check_safety(folder, config, allow_pickle=False, trust_remote_code=trust_remote_code)
    geometry = geometry_from_config(config, require_supported=require_architecture)
    tokenizer = load_tokenizer_bundle(folder) if (folder / "tokenizer.json").is_file() else None
    return SourceModel(
        path=folder, name=repo_id.split("/")[-1] or "model", config=config, geometry=geometry,
        tensors=tensors, tokenizer=tokenizer, repo_id=repo_id, revision=commit,
        content_hash=digest, download=pending,
    )  # fmt: skip


def _resolve_folder(
    model: str, revision: str | None, allow_pickle: bool = False
) -> tuple[Path, str | None, str | None]:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceModelError(
                f"{path} is a file, not a model folder.",
                hint="Pass the folder that holds config.json and the safetensors files.",
            )
        return (path, *hub_cache_identity(path))
    if _looks_like_repo_id(model):
        return _download_from_hub(model, revision, allow_pickle)
    raise SourceModelError(
        f"{model} is neither an existing folder nor a Hub repo id (owner/name).",
        hint="Check the path, or pass a repo id such as NousResearch/Hermes-3-Llama-3.1-8B.",
    )


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_identity(folder: Path) -> tuple[str | None, str | None]:
    """(repo id, commit) of a Hugging Face cache snapshot folder
    (.../models--OWNER--NAME/snapshots/<commit>), else (None, None).

    huggingface_hub names these folders after exactly that repo and commit, so a user who
    passes the snapshot path gets the same provenance in the manifest and card (base_model)
    as one who passes the repo id. Checked on the path as given and with links resolved, as
    people often reach the cache through a link.
    """
    for candidate in (folder.absolute(), folder.resolve()):
        parts = candidate.parts
        if (
            len(parts) >= 3
            and parts[-2] == "snapshots"
            and parts[-3].startswith("models--")
            and _COMMIT.match(parts[-1])
        ):
            # The Hub forbids "--" in names, so the first "--" is the owner/name separator.
            repo_id = parts[-3].removeprefix("models--").replace("--", "/", 1)
            if repo_id:
                return repo_id, parts[-1]
    return None, None


def _download_from_hub(
    repo_id: str, revision: str | None, allow_pickle: bool = False
) -> tuple[Path, str, str | None]:
    folder = download_snapshot(repo_id, revision, _hub_patterns(allow_pickle))
    commit = folder.name if len(folder.name) == 40 else revision
    return folder, repo_id, commit


def _hub_patterns(allow_pickle: bool) -> list[str]:
    # Pickled weights are fetched only when the user opted in; a repo that has both kinds
    # then downloads both (every file that matches), and load_source uses the safetensors.
    return HUB_PATTERNS + ["pytorch_model*.bin", "pytorch_model.bin.index.json"] * allow_pickle


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise SourceModelError(
            f"{folder} has no config.json.",
            hint="Pass the folder of a Hugging Face model (with config.json, tokenizer and "
            "safetensors files).",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceModelError(
            f"{path} is not valid JSON ({exc}).",
            hint="Restore config.json from the original model.",
        ) from exc


def _check_safety(
    folder: Path, config: dict[str, Any], *, allow_pickle: bool, trust_remote_code: bool
) -> None:
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeSourceError(
            f"{folder} asks for remote code (auto_map in config.json).",
            hint="quantkit does not run code shipped with a model unless you pass "
            "--trust-remote-code after reading that code.",
        )
    has_safetensors = any(folder.glob("*.safetensors"))
    pickled = [p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)]
    if pickled and not has_safetensors and not allow_pickle:
        raise UnsafeSourceError(
            f"{folder} has only pickled weights ({', '.join(sorted(pickled)[:3])}).",
            hint="Pickle files can run code when loaded. Convert them to safetensors, or pass "
            "--allow-pickle if you trust their origin.",
        )
