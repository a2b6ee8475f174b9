"""Reading calibration sources into records: the built-in mix, JSONL files and Hugging
Face datasets. A record is a dict with "messages" (and optionally "tools") or "text", and
optionally "kind". Nothing here renders or tokenizes; quantkit.calibration.sets does that."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CalibrationError, require

KINDS: tuple[str, ...] = ("prose", "code", "math", "chat", "think", "tool")


@dataclass(frozen=True)
class Records:
    """Indexable calibration records, read lazily (a Hub dataset can be large)."""

    size: int
    get: Callable[[int], dict[str, Any]]
    where: Callable[[int], str]  # "line 12 of x.jsonl", for error messages
    has_chat: bool  # some records are {"messages": ...}


def kind_of(record: dict[str, Any], where: str) -> str:
    kind = record.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise CalibrationError(
                f'{where}: unknown kind "{kind}".', hint=f"Use one of: {', '.join(KINDS)}."
            )
        return kind
    if "text" in record and "messages" not in record:
        return "prose"
    messages = record["messages"]
    if record.get("tools") or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return "tool"
    if any(
        m.get("role") == "assistant" and "<think>" in str(m.get("content") or "") for m in messages
    ):
        return "think"
    return "chat"


# --- sources -------------------------------------------------------------------------------


def builtin_dir() -> Path:
    return Path(str(resources.files("quantkit") / "data" / "calibration"))


def builtin_records() -> Records:
    folder = builtin_dir()
    rows: list[tuple[dict[str, Any], str]] = []
    for kind in KINDS:
        path = folder / f"{kind}.jsonl"
        for line_no, record in _read_jsonl(path):
            rows.append(({**record, "kind": kind}, f"line {line_no} of {path}"))
    return Records(len(rows), lambda i: rows[i][0], lambda i: rows[i][1], True)


def builtin_counts() -> dict[str, int]:
    """Samples per kind in the built-in mix (its natural shares)."""
    return {kind: sum(1 for _ in _read_jsonl(builtin_dir() / f"{kind}.jsonl")) for kind in KINDS}


def jsonl_records(path: Path) -> Records:
    if path.suffix != ".jsonl" and not path.exists():
        raise CalibrationError(
            f'Unknown calibration source "{path}".',
            hint='Use "builtin", a .jsonl file, or hf:NAME[:CONFIG]:SPLIT.',
        )
    rows = [(record, f"line {n} of {path}") for n, record in _read_jsonl(path)]
    if not rows:
        raise CalibrationError(f"The calibration file {path} has no samples.")
    has_chat = any("messages" in record for record, _ in rows)
    return Records(len(rows), lambda i: rows[i][0], lambda i: rows[i][1], has_chat)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise CalibrationError(
            f"The calibration file {path} does not exist.",
            hint='Give a .jsonl file with {"messages": [...]} or {"text": ...} lines.',
        )
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CalibrationError(
                    f"Line {line_no} of {path} is not valid JSON ({exc.msg}, column {exc.colno})."
                ) from exc
            yield line_no, _validated(record, f"line {line_no} of {path}")


def _validated(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict) or ("messages" not in record and "text" not in record):
        raise CalibrationError(
            f'{where} has neither "messages" nor "text".',
            hint='Each line must be {"messages": [{"role": ..., "content": ...}, ...]} or '
            '{"text": "..."}.',
        )
    if "messages" in record:
        messages = record["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise CalibrationError(
                f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects.'
            )
        if record.get("tools") is not None and not isinstance(record["tools"], list):
            raise CalibrationError(f'{where}: "tools" must be a list of function definitions.')
    elif not isinstance(record["text"], str) or not record["text"]:
        raise CalibrationError(f'{where}: "text" must be a non-empty string.')
    return record


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT`` -> (name, config, split)."""
    parts = spec[len("hf:") :].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise CalibrationError(
            f'"{spec}" is not a Hugging Face dataset spec.',
            hint="Use hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, e.g. hf:my-org/chats:train.",
        )
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def hf_records(spec: str) -> Records:
    name, config, split = parse_hf_spec(spec)
    datasets = require("datasets", "compress")
    try:
        local = Path(name)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(str(local))  # a Dataset(Dict).save_to_disk folder
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        else:
            data = datasets.load_dataset(name, config, split=split)
    except KeyError as exc:
        raise CalibrationError(f'{spec}: the dataset has no split "{split}".') from exc
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise CalibrationError(f"{spec}: the dataset cannot be loaded ({exc}).") from exc
    except Exception as exc:  # datasets' own errors (DatasetNotFoundError, ...)
        raise CalibrationError(f"{spec}: the dataset cannot be loaded ({exc}).") from exc
    columns = set(data.column_names)
    if not columns & {"messages", "text"}:
        raise CalibrationError(
            f'{spec}: the dataset has no "messages" or "text" column '
            f"(columns: {', '.join(sorted(columns))})."
        )
    keep = [c for c in ("messages", "text", "tools", "kind") if c in columns]

    def get(i: int) -> dict[str, Any]:
        row = data[i]
        record = {c: row[c] for c in keep if row[c] is not None}
        return _validated(record, f"row {i} of {spec}")

    return Records(len(data), get, lambda i: f"row {i} of {spec}", "messages" in columns)
