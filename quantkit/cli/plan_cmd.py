"""`quantkit plan MODEL [--profile NAME | --all] [--context N] [--json]`.

Thin: parse, call quantkit.planning.planner, render. Only light modules are imported here so that
`quantkit plan` answers instantly (no torch, no llama_cpp).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..planning.planner import AutoBudgetFlags, Plan, best_plan, plan_model
from . import console
from .options import BpwOption, JsonFlag, MaxSizeOption, ProfileOption, QuietFlag, RevisionOption

_FIT_STYLE = {"full": "green", "partial": "yellow", "none": "red"}
_FIT_WORDS = {
    "full": "fits fully",
    "partial": "fits with partial offload",
    "none": "does not fit",
}


def register(app: typer.Typer) -> None:
    app.command(
        "plan",
        help="Will MODEL fit the hardware? Sizes, verdict, largest context, run command.",
        epilog="Examples:  quantkit plan NousResearch/Hermes-4-70B --profile rtx4090-4bit\n\n"
        "quantkit plan ./Hermes-3-Llama-3.1-8B --all --context 32768 --json",
    )(plan)


def plan(
    model: Annotated[str, typer.Argument(help="Model folder, config.json, or Hub repo id.")],
    profile: ProfileOption = None,
    all_profiles: Annotated[
        bool, typer.Option("--all", help="Plan for every profile (the default without -p).")
    ] = False,
    context: Annotated[
        int | None, typer.Option("--context", "-c", min=1, help="Context length in tokens.")
    ] = None,
    revision: RevisionOption = None,
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            "-q",
            help="auto: also show the type per tensor quant auto would start from, for the "
            "profile's memory or a size (no weights read: see docs/quantization.md).",
        ),
    ] = None,
    max_size: MaxSizeOption = None,
    bpw: BpwOption = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    if profile and all_profiles:
        raise typer.BadParameter("Pass either --profile or --all, not both.")
    if quant is not None and quant.lower() != "auto":
        raise typer.BadParameter("plan takes --quant auto; the profile names every other type.")
    if (max_size is not None or bpw is not None) and quant is None:
        raise typer.BadParameter("--max-size and --bpw go with --quant auto.")
    console.configure(json_mode=json_out, quiet=quiet)
    auto = AutoBudgetFlags(max_size, bpw) if quant is not None else None
    plans = plan_model(model, profile, context=context, revision=revision, auto=auto)
    if profile:
        _render_one(plans[0], json_out)
    else:
        _render_all(plans, json_out)


def _render_one(plan: Plan, json_out: bool) -> None:
    if json_out:
        console.print_json(plan.to_dict())
        return
    _print_summary([plan])
    _render_details(plan)


def _render_all(plans: list[Plan], json_out: bool) -> None:
    best = best_plan(plans)
    if json_out:
        console.print_json(
            {
                "model": plans[0].model if plans else None,
                "recommended": best.to_dict() if best else None,
                "plans": [p.to_dict() for p in plans],
            }
        )
        return
    _print_summary(plans)
    if best is None:
        console.print_text("No profile runs this model.", style="bold red")
        return
    console.print_text(f"\nRecommended: [bold]{best.profile}[/] ({best.format} {best.quant})")
    _render_details(best)


_COLUMNS = (
    console.Col("profile", keep=True),
    console.Col("format"),  # "gguf Q4_K_M": wraps between the two words if it must
    console.Col("weights", justify="right"),
    console.Col("KV @ ctx", justify="right"),
    console.Col("total", justify="right"),
    console.Col("verdict"),
    console.Col("max ctx", justify="right"),
)


def _print_summary(plans: list[Plan]) -> None:
    rows = []
    for p in plans:
        verdict = _FIT_WORDS[p.fit]
        if p.fit == "partial":
            verdict += f" ({p.gpu_layers}/{p.n_layers} layers on GPU)"
        rows.append(
            (
                p.profile,
                f"{p.format} {p.quant}",
                _gb(p.weights_bytes),
                f"{_gb(p.kv_cache_bytes)} @ {p.context}",
                _gb(p.total_bytes),
                f"[{_FIT_STYLE[p.fit]}]{verdict}[/]",
                str(p.max_context) if p.max_context else "-",
            )
        )
    title = f"quantkit plan: {plans[0].model}" if plans else "quantkit plan"
    console.print_table(_COLUMNS, rows, title=title)


def _render_details(plan: Plan) -> None:
    console.print_text(
        f"\n[bold]{plan.model}[/] on [bold]{plan.profile}[/]: "
        f"[{_FIT_STYLE[plan.fit]}]{_FIT_WORDS[plan.fit]}[/] at {plan.context} tokens "
        f"(one device needs {_gib(plan.device_need_bytes)} of {_gib(plan.device_budget_bytes)})."
    )
    if plan.max_context:
        console.print_text(f"Largest context with this verdict: {plan.max_context} tokens.")
    if plan.command:
        console.print_text("\nRun it with:")
        console.print_text(plan.command, style="cyan", soft_wrap=True)
    if plan.modelfile:
        console.print_text("\nModelfile:")
        console.print_text(plan.modelfile.rstrip(), style="cyan", soft_wrap=True)
    if plan.recommended_profile:
        console.print_text(f"\nFits fully on profile: [bold]{plan.recommended_profile}[/]")
    if plan.smaller_models:
        console.print_text("Smaller models that fit this hardware fully:")
        for name in plan.smaller_models:
            console.print_text(f"  - {name}")
    for note in plan.notes:
        console.print_text(f"note: {note}", style="dim")
    if plan.auto:
        _render_auto(plan.auto)
    if plan.convert:
        console.print_text(f"\nConverting to it here (quantkit convert --profile {plan.profile}):")
        console.print_cost(plan.convert)


_AUTO_COLUMNS = (console.Col("tensor role", keep=True), console.Col("types (tensors)"))


def _render_auto(auto: dict) -> None:
    budget = auto["budget"]
    scope = "on the GPU" if budget["scope"] == "gpu" else "for the file"
    console.print_text(
        f"\n--quant auto: budget {_gb(budget['bytes'])} {scope} ({budget['origin']}); "
        f"expected file {_gb(auto['expected_bytes'])}, recorded as {auto['file_type']}."
    )
    rows = [(role, ", ".join(f"{t} x{n}" for t, n in types.items()))
            for role, types in auto["types_by_role"].items()]  # fmt: skip
    console.print_table(
        _AUTO_COLUMNS, rows, title="starting mix (Gaussian errors, no weights read)"
    )
    console.print_text(
        "note: convert measures each tensor's error and each role's KL divergence, so its "
        "mix differs from this one.",
        style="dim",
    )


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"
