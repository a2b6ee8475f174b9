"""What the planner needs to know about a model: geometry plus a tensor inventory.

Three ways in, best first:
- a SourceModel (local folder): the real safetensors headers;
- a Hub repo id: the headers through huggingface_hub's metadata API (a few HTTP range
  requests, no weights) and config.json;
- a config.json alone: parameter shapes derived from the architecture.
The first two see what is really there (untied heads, extra tensors, 8 vs 16 KV heads);
the third is exact for the Llama/Qwen3 layouts quantkit supports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SourceModelError
from ..formats.safetensors_index import TensorInfo
from ..source.model import ModelGeometry, SourceModel, geometry_from_config
from ..source.structure import derived_tensors  # the one list of a config's tensors


@dataclass(frozen=True)
class ModelSpec:
    name: str
    geometry: ModelGeometry
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    inventory: str  # "safetensors" | "hub-metadata" | "config"
    vocab_entries: int = 0  # tokenizer entries, for the GGUF metadata estimate
    # name -> template where the tokenizer files were read; empty when not known
    chat_templates: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def source_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def spec_from_source(source: SourceModel) -> ModelSpec:
    return ModelSpec(
        name=source.name,
        geometry=source.geometry,
        tensors=weight_tensors(source.tensors),
        inventory="safetensors",
        vocab_entries=source.geometry.vocab_size,
        chat_templates=dict(source.tokenizer.chat_templates) if source.tokenizer else {},
    )


def spec_from_config(
    config: dict[str, Any], name: str, *, tensors: tuple[TensorInfo, ...] | None = None
) -> ModelSpec:
    """A spec from config.json, with the real inventory when one is given."""
    geometry = geometry_from_config(config, require_supported=False)
    return ModelSpec(
        name=name,
        geometry=geometry,
        tensors=weight_tensors(tensors) if tensors else derived_tensors(geometry),
        inventory="hub-metadata" if tensors else "config",
        vocab_entries=geometry.vocab_size,
    )


def spec_from_config_file(path: Path) -> ModelSpec:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceModelError(f"Cannot read {path} as JSON ({exc}).") from exc
    name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_config(config, name or "model")


def spec_from_hub(repo_id: str, revision: str | None = None) -> ModelSpec:
    """config.json plus the safetensors headers of a Hub repo, without the weights."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        RepositoryNotFoundError,
    )

    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision)
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        try:
            meta = get_safetensors_metadata(repo_id, revision=revision)
            tensors = tuple(
                TensorInfo(name, info.dtype, tuple(info.shape), file, _nbytes(info))
                for file, file_meta in meta.files_metadata.items()
                for name, info in file_meta.tensors.items()
            )
        except NotASafetensorsRepoError:
            tensors = None  # pickled or GGUF-only repo: fall back to the config
    except RepositoryNotFoundError as exc:
        raise SourceModelError(
            f"The Hub has no repo {repo_id!r} (or it is gated and you are not logged in).",
            hint="Check the id, or run `hf auth login` / set HF_TOKEN.",
        ) from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise SourceModelError(
            f"Cannot reach the Hugging Face Hub to read {repo_id} ({exc.__class__.__name__}).",
            hint="Connect to the network, or pass a local folder or a config.json path "
            "(`quantkit plan path/to/config.json`).",
        ) from exc
    except HfHubHTTPError as exc:
        raise SourceModelError(f"Reading {repo_id} from the Hub failed: {exc}.") from exc
    return spec_from_config(config, repo_id.split("/")[-1], tensors=tensors)


def _nbytes(info: Any) -> int:
    start, end = info.data_offsets
    return end - start


def weight_tensors(tensors: tuple[TensorInfo, ...]) -> tuple[TensorInfo, ...]:
    """Model weights only: drop buffers such as rotary inv_freq that some exports carry."""
    return tuple(t for t in tensors if t.name.endswith(".weight"))
