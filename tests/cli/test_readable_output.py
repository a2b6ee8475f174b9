"""The CLI as people read it: in a pipe, a CI log or a narrow terminal identifiers and numbers
are printed whole, --help shows flags as flags, and a Hugging Face cache snapshot is known
to be a Hub repo at a revision (#16)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer.main
from support.cli_runner import run_cli

from quantkit.cli import app
from quantkit.cli.console import _FOLD_MIN, _layout

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BOX = ("┏", "┃", "┡", "│", "└")  # the lines of a rich table


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(BOX)]


def profiles() -> list[dict]:
    proc = run_cli("profiles", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["profiles"]


# --- identifiers whole in a pipe (no COLUMNS) and at 80 columns ----------------------------


@pytest.mark.parametrize("columns", [None, 80], ids=["pipe", "80-columns"])
def test_plan_all_prints_every_profile_and_quant_whole(demo_model: Path, columns) -> None:
    proc = run_cli("plan", demo_model, "--all", columns=columns)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    words = set(" ".join(table_lines(proc.stdout)).replace("│", " ").split())
    for profile in profiles():
        assert profile["name"] in words, profile["name"]
        assert profile["quant"] in words and profile["format"] in words, profile["name"]
    if columns:
        assert max(map(len, table_lines(proc.stdout))) <= columns
    # The run command is for copying: one line whatever the width.
    plans = json.loads(run_cli("plan", demo_model, "--all", "--json").stdout)
    assert plans["recommended"]["command"] in proc.stdout.splitlines()


@pytest.mark.parametrize("columns", [None, 80], ids=["pipe", "80-columns"])
def test_profiles_table_prints_names_whole(columns) -> None:
    proc = run_cli("profiles", columns=columns)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    words = set(" ".join(table_lines(proc.stdout)).replace("│", " ").split())
    for profile in profiles():
        assert profile["name"] in words
        if columns is None:  # room for everything: every cell on one line
            assert profile["device"] in proc.stdout and profile["quant"] in words
    if columns:
        assert max(map(len, table_lines(proc.stdout))) <= columns


def test_layout_keeps_words_whole_while_it_can_and_never_squeezes_a_column_away() -> None:
    keep, natural, words = [True, False, False], [20, 30, 8], [20, 12, 5]
    assert _layout(keep, natural, words, 58) == [None, None, None]  # all fits
    assert _layout(keep, natural, words, 40) == [20, 14, 5]  # words whole, spare shared
    squeezed = _layout(keep, natural, words, 30)
    assert squeezed[0] == 20 and squeezed[2] == 5 and squeezed[1] >= _FOLD_MIN
    assert min(_layout(keep, natural, words, 5)) >= _FOLD_MIN  # folds; nothing vanishes


# --- --help: flags read as flags -----------------------------------------------------------


def _commands() -> dict[str, object]:
    group = typer.main.get_command(app)
    return {"": group, **group.commands}


@pytest.mark.parametrize("name", list(_commands()), ids=lambda n: n or "quantkit")
def test_help_shows_flags_without_a_value(name: str) -> None:
    command = _commands()[name]
    proc = run_cli(*([name] if name else []), "--help", columns=120)
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout
    flags = [p for p in command.params if getattr(p, "is_flag", False) or getattr(p, "count", 0)]
    for flag in [*flags, None]:
        opt = flag.opts[0] if flag else "--help"
        pattern = re.compile(rf"(?<![\w-]){re.escape(opt)}(?![\w-])")
        line = next(line for line in proc.stdout.splitlines() if pattern.search(line))
        assert "<" not in line, line  # no type, as if it took a value
    takes_value = [p for p in command.params if p.param_type_name == "option" and p not in flags]
    for option in takes_value:  # and options that take one still say what
        pattern = re.compile(rf"(?<![\w-]){re.escape(option.opts[0])}(?![\w-])")
        line = next(line for line in proc.stdout.splitlines() if pattern.search(line))
        assert "<" in line, line


# --- a Hugging Face cache snapshot is a Hub repo at a revision -----------------------------


def hf_cache_snapshot(root: Path, repo_id: str, model: Path) -> Path:
    """`model` laid out as huggingface_hub's cache lays out a download (files linked, as the
    cache links them to its blobs)."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for item in model.iterdir():
        (snapshot / item.name).symlink_to(item, target_is_directory=item.is_dir())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_snapshot_folder_names_its_repo_and_revision(demo_model: Path, tmp_path: Path) -> None:
    from quantkit.source.model import hub_cache_identity, load_source

    snapshot = hf_cache_snapshot(tmp_path, "NousResearch/Hermes-demo", demo_model)
    source = load_source(snapshot)
    assert (source.repo_id, source.revision) == ("NousResearch/Hermes-demo", COMMIT)
    assert source.name == "Hermes-demo"  # not the 40-hex folder name
    assert hub_cache_identity(demo_model) == (None, None)
    not_a_commit = snapshot.parent / "main"
    not_a_commit.symlink_to(snapshot, target_is_directory=True)
    assert hub_cache_identity(not_a_commit) == ("NousResearch/Hermes-demo", COMMIT)  # resolved


@pytest.mark.slow
def test_convert_of_a_snapshot_cards_the_base_model_and_lists_files_whole(
    demo_model: Path, tmp_path: Path
) -> None:
    from quantkit.artifact.card_facts import parse_front_matter

    snapshot = hf_cache_snapshot(tmp_path, "NousResearch/Hermes-demo", demo_model)
    out = tmp_path / "out"
    proc = run_cli(
        "convert", snapshot, "--format", "gguf", "--quant", "Q8_0", "--no-verify", "--out", out,
        columns=None,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["repo_id"] == "NousResearch/Hermes-demo"
    assert manifest["source"]["revision"] == COMMIT
    card = (out / "README.md").read_text()
    front = parse_front_matter(card)
    assert front["base_model"] == "NousResearch/Hermes-demo"
    assert front["base_model_relation"] == "quantized"
    assert COMMIT in card  # the source revision
    # The artifact table, in a pipe: every file name and tensor type whole.
    assert "…" not in proc.stdout and str(out) in proc.stdout
    words = set(" ".join(table_lines(proc.stdout)).replace("│", " ").replace(",", " ").split())
    for f in manifest["files"]:
        if not f["name"].endswith(".gguf"):
            continue
        assert f["name"] in words and f["sha256"][:16] in words
        assert {f"{k}:{v}" for k, v in f.get("tensor_types", {}).items()} <= words
    # The same files listed by upload at 80 columns.
    listing = run_cli("upload", out, "--repo", "alice/Hermes-demo-GGUF", "--dry-run", columns=80)
    assert listing.returncode == 0, listing.stderr
    assert "…" not in listing.stdout
    assert max(map(len, table_lines(listing.stdout))) <= 80
    words = set(" ".join(table_lines(listing.stdout)).replace("│", " ").split())
    assert {f["name"] for f in manifest["files"] if f["name"].endswith(".gguf")} <= words
