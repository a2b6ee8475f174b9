"""`quantkit profiles [--json]`: the hardware profiles quantkit knows (profiles/*.toml)."""

from __future__ import annotations

import typer

from ..planning.profiles import HardwareProfile, list_profiles, profiles_dir
from . import console
from .options import JsonFlag, QuietFlag


def register(app: typer.Typer) -> None:
    app.command("profiles", help="List the hardware profiles (profiles/*.toml).")(profiles)


_COLUMNS = (
    console.Col("name", keep=True),  # what -p takes: never wrapped
    console.Col("hardware"),
    console.Col("memory"),
    console.Col("FP8"),
    console.Col("format"),
    console.Col("runtime"),
    console.Col("parallel"),
)


def profiles(
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    console.configure(json_mode=json_out, quiet=quiet)
    found = list_profiles()
    if json_out:
        console.print_json(
            {"profiles_dir": str(profiles_dir()), "profiles": [profile_dict(p) for p in found]}
        )
        return
    rows = [
        (
            p.name,
            f"{p.device_count}x {p.device}" if p.device_count > 1 else p.device,
            f"{p.memory_gib:g} GiB x {p.usable_fraction:g}",
            p.fp8,
            f"{p.format} {p.quant}",
            p.runtime,
            f"TP {p.tensor_parallel} x PP {p.pipeline_parallel}",
        )
        for p in found
    ]
    console.print_table(_COLUMNS, rows, title=f"Hardware profiles ({profiles_dir()})")


def profile_dict(p: HardwareProfile) -> dict:
    return {
        "name": p.name,
        "description": p.description,
        "format": p.format,
        "quant": p.quant,
        "runtime": p.runtime,
        "runtimes": list(p.runtimes),
        "device": p.device,
        "kind": p.kind,
        "devices_per_node": p.devices_per_node,
        "nodes": p.nodes,
        "memory_gib": p.memory_gib,
        "usable_fraction": p.usable_fraction,
        "compute_capability": p.compute_capability,
        "fp8": p.fp8,
        "interconnect": p.interconnect,
        "system_ram_gib": p.system_ram_gib,
        "kv_cache_type": p.kv_cache_type,
        "tensor_parallel": p.tensor_parallel,
        "pipeline_parallel": p.pipeline_parallel,
        "gpu_memory_utilization": p.gpu_memory_utilization,
        "quality": {
            "max_ppl_increase": p.quality.max_ppl_increase,
            "max_kld": p.quality.max_kld,
            "min_top1": p.quality.min_top1,
        },
        "source": str(p.source) if p.source else None,
    }
