"""`quantkit upload`: flags map one to one onto quantkit.hub.publish.publish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import console
from .options import JsonFlag, QuietFlag

EXAMPLES = """
Examples:

  quantkit upload ./hermes3-8b-q4 --repo alice/Hermes-3-Llama-3.1-8B-GGUF --dry-run

  quantkit upload ./hermes3-8b-q4 --repo alice/Hermes-3-Llama-3.1-8B-GGUF --private

  quantkit upload ./hermes3-8b-q4 --repo acme/Hermes-3-GGUF --create-pr --json

The token comes from HF_TOKEN or `hf auth login`; it needs write access.
"""


def register(app: typer.Typer) -> None:
    app.command(name="upload", epilog=EXAMPLES)(upload_command)


def upload_command(
    artifact_dir: Annotated[
        Path, typer.Argument(help="Artifact folder written by `quantkit convert`.")
    ],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Hub model repo: OWNER/NAME.")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (if it is new).")
    ] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to upload to (created if missing).")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Write the model card and list the files; send nothing."),
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Hub id of the source, when the manifest lacks it."),
    ] = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Publish an artifact to the Hugging Face Hub with a generated model card, then check
    that the Hub holds exactly the files of the manifest."""
    from ..hub.publish import publish

    console.configure(json_mode=json_out, quiet=quiet)
    if json_out or quiet or console.human() is None or not console.human().is_terminal:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    result = publish(
        artifact_dir,
        repo,
        private=private,
        revision=revision,
        create_pr=create_pr,
        dry_run=dry_run,
        base_model=base_model,
    )
    payload = result.to_dict()
    if json_out:
        console.print_json(payload)
    else:
        _render(payload)


def _render(payload: dict[str, Any]) -> None:
    from rich.markup import escape

    head = "dry run: would upload" if payload["dry_run"] else "uploaded"
    where = payload["revision"]
    console.print_text(f"{head} to [bold]{escape(payload['repo_id'])}[/] ({escape(where)})")
    for split in payload["splits"]:
        verb = "would split" if payload["dry_run"] else "split"
        console.print_text(
            f"{verb} {escape(split['file'])} into {len(split['shards'])} shards (Hub limit 50 GB)"
        )
    columns = [console.Col("file", keep=True), console.Col("size", justify="right")]
    columns += [console.Col("sha256", keep=True)]
    columns += [] if payload["dry_run"] else [console.Col("LFS", keep=True)]
    rows = []
    for f in payload["files"]:
        row = [escape(f["name"]), _size(f["bytes"]), (f.get("sha256") or "")[:16] or "-"]
        if not payload["dry_run"]:
            row.append("yes" if f.get("lfs") else "no")
        rows.append(row)
    console.print_table(columns, rows)
    if payload["card"]:
        console.print_text(f"model card: {escape(payload['card'])}")
    if payload["modelfile"]:
        console.print_text(f"Ollama Modelfile: {escape(payload['modelfile'])}")
    for note in payload["notes"]:
        console.print_text(f"note: {escape(note)}", style="yellow")
    if payload["dry_run"]:
        source = payload["token_source"] or "none found (set HF_TOKEN or run `hf auth login`)"
        console.print_text(f"token: {escape(source)}; nothing was sent.")
        return
    if payload["pr_url"]:
        console.print_text(f"pull request: {escape(payload['pr_url'])}")
    elif payload["commit_url"]:
        console.print_text(f"commit: {escape(payload['commit_url'])}")
    console.print_text(
        "[green]verified[/]: sizes and sha256 on the Hub match the manifest"
        if payload["verified"]
        else "[red]not verified[/]"
    )


def _size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:,.2f} GB"
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"  # not "0.0 MB"
