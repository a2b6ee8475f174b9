"""The classic GPTQ layout (AutoGPTQ, GPTQModel, exllama), repacked from our
compressed-tensors W4A16 result, and unpackers for both layouts.

compressed-tensors `pack-quantized`, per quantized Linear (out x in):
  weight_packed int32 [out, in/8]   eight 4-bit values per word along the input axis,
                                    value i at bits 4i, stored as q + 8 (q in -8..7)
  weight_scale  [out, in/g]         one scale per group of g input columns
  weight_shape  int [2]             (out, in)
  w = scale * q                     (symmetric: no zero point)

Classic GPTQ (`checkpoint_format: gptq`, the v1 layout every GPTQ loader reads):
  qweight int32 [in/8, out]         eight 4-bit values per word along the input axis
  qzeros  int32 [in/g, out/8]       eight 4-bit zero points per word along the output axis,
                                    stored minus one (the v1 convention): 8 -> 7
  scales  float16 [in/g, out]
  g_idx   int32 [in]                group of each input column (i // g: no act-order
                                    permutation is stored, llmcompressor's "static"
                                    act-order keeps groups contiguous)
  w = scales[g_idx[i]] * (u - (qzero + 1)), u the stored 4-bit value

Both layouts hold the same integers and the same scales (BF16 scales are exact in FP16
while they stay inside FP16's range, which is checked), so they dequantize to the same
weights; tests/backends/safetensors/test_gptq_classic.py proves it tensor by tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ...errors import ConversionError

CLASSIC_DIR = "classic-gptq"
_PACK = 8  # 4-bit values per int32
_FP16_MAX = 65504.0


class GPTQRepackError(ConversionError):
    """The compressed-tensors result cannot be expressed in the classic GPTQ layout."""


# --- packing primitives (torch int32, little-endian nibbles) --------------------------------


def pack_nibbles(values, dim: int):
    """Pack unsigned 4-bit values (0..15) along `dim` (length a multiple of 8) into int32,
    value j of each run of eight at bits 4j."""
    import torch

    moved = values.to(torch.int64).movedim(dim, -1)
    if moved.shape[-1] % _PACK:
        raise GPTQRepackError(f"cannot pack {moved.shape[-1]} values into whole int32 words")
    runs = moved.reshape(*moved.shape[:-1], -1, _PACK)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = (runs << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_nibbles(words, dim: int, length: int):
    """The inverse of pack_nibbles: int32 words -> unsigned 4-bit values along `dim`."""
    import torch

    moved = words.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    values = (moved.unsqueeze(-1) >> shifts) & 0xF
    values = values.reshape(*moved.shape[:-1], -1)[..., :length]
    return values.to(torch.int32).movedim(-1, dim).contiguous()


# --- dequantization of both layouts ---------------------------------------------------------


def dequantize_compressed_module(tensors: dict[str, Any], group_size: int):
    """float32 weight (out x in) of one compressed-tensors pack-quantized Linear."""
    import torch

    out_features, in_features = (int(x) for x in tensors["weight_shape"].tolist())
    q = unpack_nibbles(tensors["weight_packed"], 1, in_features) - 8
    scale = tensors["weight_scale"].to(torch.float32)
    return q.to(torch.float32) * scale.repeat_interleave(group_size, dim=1)[:, :in_features]


def dequantize_classic_module(tensors: dict[str, Any]):
    """float32 weight (out x in) of one classic GPTQ Linear."""
    import torch

    g_idx = tensors["g_idx"].to(torch.int64)
    in_features = g_idx.numel()
    out_features = tensors["scales"].shape[1]
    u = unpack_nibbles(tensors["qweight"], 0, in_features)  # [in, out]
    zeros = unpack_nibbles(tensors["qzeros"], 1, out_features) + 1  # [groups, out]
    scales = tensors["scales"].to(torch.float32)
    w = (u - zeros[g_idx]).to(torch.float32) * scales[g_idx]
    return w.t().contiguous()


def dequantize_folder(folder: Path, layout: str) -> dict[str, Any]:
    """Every quantized Linear of an artifact folder, dequantized to float32 (out x in),
    by module name. `layout` is "compressed-tensors" or "gptq"."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    qcfg = config["quantization_config"]
    tensors = _read_all(folder)
    suffix = "weight_packed" if layout == "compressed-tensors" else "qweight"
    result = {}
    for name in sorted(tensors):
        if not name.endswith("." + suffix):
            continue
        module = name[: -len(suffix) - 1]
        parts = {k[len(module) + 1 :]: v for k, v in tensors.items() if k.startswith(module + ".")}
        if layout == "compressed-tensors":
            group = qcfg["config_groups"]["group_0"]["weights"]["group_size"]
            result[module] = dequantize_compressed_module(parts, group)
        else:
            result[module] = dequantize_classic_module(parts)
    return result


def layouts_match_check(ct_folder: Path, classic_folder: Path, modules: int = 7):
    """The first `modules` quantized Linears of both layouts dequantize to the same
    weights (reads only those tensors)."""

    from ...inspection.check import Check

    config = json.loads((ct_folder / "config.json").read_text(encoding="utf-8"))
    group = _check_scheme(config["quantization_config"])
    ct = _module_tensors(
        ct_folder, "weight_packed", ("weight_packed", "weight_scale", "weight_shape"), modules
    )
    classic = _module_tensors(
        classic_folder, "qweight", ("qweight", "qzeros", "scales", "g_idx"), modules
    )
    worst = 0.0
    for name, parts in ct.items():
        if name not in classic:
            return Check(
                "classic GPTQ layout matches", False, f"{name} missing from {CLASSIC_DIR}/"
            )
        a = dequantize_compressed_module(parts, group)
        b = dequantize_classic_module(classic[name])
        worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    ok = bool(ct) and worst <= 1e-3
    return Check(
        "classic GPTQ layout matches",
        ok,
        f"{len(ct)} modules dequantize alike in both layouts (max relative difference {worst:.2e})",
    )


def _module_tensors(folder: Path, marker: str, parts: tuple[str, ...], limit: int) -> dict:
    from safetensors import safe_open

    found: dict[str, dict[str, Any]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            keys = set(fh.keys())
            modules = sorted(k[: -len(marker) - 1] for k in keys if k.endswith("." + marker))
            for module in modules[: limit - len(found)]:
                found[module] = {p: fh.get_tensor(f"{module}.{p}") for p in parts}
        if len(found) >= limit:
            break
    return found


# --- repacking ------------------------------------------------------------------------------


def classic_module(tensors: dict[str, Any], group_size: int, name: str) -> dict[str, Any]:
    """qweight/qzeros/scales/g_idx of one Linear from its compressed-tensors tensors."""
    import torch

    out_features, in_features = (int(x) for x in tensors["weight_shape"].tolist())
    if in_features % group_size or in_features % _PACK or out_features % _PACK:
        raise GPTQRepackError(
            f"{name} is {out_features} x {in_features}; the classic GPTQ layout needs both "
            f"dimensions divisible by 8 and the input by the group size {group_size}.",
            hint="Use gptq_format='compressed-tensors' for this model.",
        )
    u = unpack_nibbles(tensors["weight_packed"], 1, in_features)  # [out, in], q + 8
    scale = tensors["weight_scale"].to(torch.float32)
    if float(scale.abs().max()) > _FP16_MAX:
        raise GPTQRepackError(f"{name} has scales beyond FP16's range.")
    groups = in_features // group_size
    return {
        "qweight": pack_nibbles(u.t(), 0),
        "qzeros": pack_nibbles(torch.full((groups, out_features), 7, dtype=torch.int32), 1),
        "scales": scale.t().to(torch.float16).contiguous(),
        "g_idx": (torch.arange(in_features, dtype=torch.int32) // group_size).contiguous(),
    }


def write_classic(ct_folder: Path, out: Path, *, dampening: float) -> list[Path]:
    """Repack the compressed-tensors W4A16 folder into `out` in the classic layout (same
    shard files; unquantized tensors as FP16, as GPTQ kernels expect). Returns the
    weight files written."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((ct_folder / "config.json").read_text(encoding="utf-8"))
    group_size = _check_scheme(config.get("quantization_config") or {})
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(ct_folder.glob("*.safetensors"))
    weight_map: dict[str, str] = {}
    total = 0
    for shard in shards:
        result: dict[str, Any] = {}
        with safe_open(str(shard), framework="pt") as fh:
            names = list(fh.keys())
            modules = sorted(
                n[: -len(".weight_packed")] for n in names if n.endswith(".weight_packed")
            )
            for module in modules:
                parts = {
                    s: fh.get_tensor(f"{module}.{s}")
                    for s in ("weight_packed", "weight_scale", "weight_shape")
                }
                for key, tensor in classic_module(parts, group_size, module).items():
                    result[f"{module}.{key}"] = tensor
            done = {
                f"{m}.{s}"
                for m in modules
                for s in ("weight_packed", "weight_scale", "weight_shape")
            }
            for name in names:
                if name not in done:
                    tensor = fh.get_tensor(name)
                    result[name] = (
                        tensor.to(torch.float16) if tensor.is_floating_point() else tensor
                    )
        save_file(result, str(out / shard.name), metadata={"format": "pt"})
        weight_map.update({name: shard.name for name in result})
        total += sum(t.numel() * t.element_size() for t in result.values())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    quantize_config = gptq_quantize_config(group_size, dampening)
    _write_json(out / "quantize_config.json", quantize_config)
    config["quantization_config"] = {"quant_method": "gptq", **quantize_config}
    config["torch_dtype"] = "float16"
    if "dtype" in config:
        config["dtype"] = "float16"
    _write_json(out / "config.json", config)
    for extra in ("generation_config.json", "recipe.yaml"):
        if (ct_folder / extra).is_file():
            shutil.copyfile(ct_folder / extra, out / extra)
    return [out / shard.name for shard in shards]


def gptq_quantize_config(group_size: int, dampening: float) -> dict[str, Any]:
    """quantize_config.json as AutoGPTQ/GPTQModel write it. desc_act is False even with
    act-order: llmcompressor's static act-order changes the quantization order only, the
    groups stay contiguous and g_idx is the identity grouping. static_groups is True:
    llmcompressor computes every group's scale before the GPTQ pass."""
    return {
        "bits": 4,
        "group_size": group_size,
        "desc_act": False,
        "sym": True,
        "true_sequential": True,
        "static_groups": True,
        "damp_percent": dampening,
        "lm_head": False,
        "checkpoint_format": "gptq",
        "quantizer": "quantkit (llmcompressor GPTQ, repacked)",
    }


def _check_scheme(qcfg: dict[str, Any]) -> int:
    groups = qcfg.get("config_groups") or {}
    weights = [g.get("weights") or {} for g in groups.values()]
    ok = (
        qcfg.get("format") == "pack-quantized"
        and weights
        and all(
            w.get("num_bits") == 4 and w.get("symmetric") and w.get("strategy") == "group"
            for w in weights
        )
    )
    sizes = {w.get("group_size") for w in weights}
    if not ok or len(sizes) != 1:
        raise GPTQRepackError(
            "Only symmetric 4-bit group-wise compressed-tensors weights (W4A16) can be "
            "repacked into the classic GPTQ layout.",
            hint="Use gptq_format='compressed-tensors'.",
        )
    return int(sizes.pop())


def _read_all(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
