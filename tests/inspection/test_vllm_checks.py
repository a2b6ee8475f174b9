"""The vLLM round trip (quantkit.inspection.vllm_checks) where the suite runs: no GPU, no
vLLM. What can be shown here: the checks are skipped with the reason and never passed,
the runtime probe tells a missing vLLM from a missing GPU, the grammar that makes the model
call admits exactly Hermes calls of the battery's tools, and the server command carries
the parsers. The round trip itself ran on a GPU with `scripts/gpu_vllm_round_trip.py`
(docs/gpu.md): vLLM's own server, tokenizer, grammar and parsers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from quantkit.inspection.server_checks import TOOL_NAMES, TOOLS
from quantkit.inspection.vllm_checks import NAMES, _has_think_tags, call_regex, vllm_checks
from quantkit.runtime.local_server import KEEP_LOGS, LocalServer
from quantkit.runtime.vllm_server import (
    ENV_ARGS,
    REASONING_PARSER,
    TOOL_PARSER,
    VllmServer,
    VllmServerError,
    find_vllm,
)


def test_without_vllm_every_check_is_skipped_with_the_reason(tmp_path: Path) -> None:
    checks = vllm_checks(tmp_path)
    assert [c.name for c in checks] == list(NAMES)
    for check in checks:
        assert check.skipped and not check.passed and not check.fatal
        assert "vLLM is not installed" in check.evidence


def test_an_installed_vllm_without_a_gpu_is_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vllm distribution on the path (its metadata and an empty package), on this
    machine without CUDA: found, and refused for the GPU, with its version."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    info = tmp_path / "vllm-0.26.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    runtime, why = find_vllm()
    assert runtime is None
    assert why == "vLLM 0.26.0 is installed but no CUDA GPU is visible to PyTorch"


def _call(name: str, arguments: dict) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


@pytest.mark.parametrize(
    ("text", "admitted"),
    [
        (_call("get_weather", {"city": "Zurich"}), True),
        (_call("search", {"q": "Tokyo weather"}), True),
        (_call("get_weather", {"city": ""}), False),  # an argument is sampled, not empty
        (_call("get_time", {"city": "Zurich"}), False),  # not a tool of the request
        (_call("get_weather", {"q": "Zurich"}), False),  # another tool's parameter
        ("<tool_call>\n" + json.dumps({"name": "get_weather"}) + "\n</tool_call>", False),
        (_call("get_weather", {"city": "Zurich"}) + " and more", False),
    ],
)
def test_the_call_grammar_admits_hermes_calls_of_the_tools_only(text: str, admitted: bool):
    assert bool(re.fullmatch(call_regex(TOOLS), text)) is admitted


def test_what_the_grammar_admits_is_a_call_of_a_known_tool() -> None:
    # The JSON between the tags of any admitted text parses, with a known name: what vLLM's
    # hermes parser then returns as tool_calls.
    text = _call("search", {"q": "a b"})
    assert re.fullmatch(call_regex(TOOLS), text)
    call = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert call["name"] in TOOL_NAMES and isinstance(call["arguments"], dict)


def test_the_server_command_carries_the_parsers_and_the_users_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_ARGS, "--tensor-parallel-size 2 --gpu-memory-utilization 0.5")
    server = VllmServer(tmp_path)
    server.port = 8123
    cmd = server.command()
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(tmp_path)]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert "--enable-auto-tool-choice" in cmd
    assert cmd[cmd.index("--tool-call-parser") + 1] == TOOL_PARSER == "hermes"
    assert cmd[cmd.index("--reasoning-parser") + 1] == REASONING_PARSER
    assert cmd[-4:] == ["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5"]
    assert server.environment()["HF_HUB_OFFLINE"] == "1"
    # vLLM's reasoning parsers refuse a vocabulary without <think> and </think>.
    assert "--reasoning-parser" not in VllmServer(tmp_path, reasoning=False).command()


def test_the_reasoning_parser_is_asked_for_only_with_both_tags(
    llama31_tokenizer_files: Path, demo_model: Path
) -> None:
    assert _has_think_tags(llama31_tokenizer_files)
    vocab = json.loads((demo_model / "tokenizer.json").read_text())["model"]["vocab"]
    added = {t["content"] for t in json.loads((demo_model / "tokenizer.json").read_text())[
        "added_tokens"]}  # fmt: skip
    has_both = all(t in vocab or t in added for t in ("<think>", "</think>"))
    assert _has_think_tags(demo_model) is has_both


class _Dies(LocalServer):
    name = "dies"
    error = VllmServerError

    def command(self) -> list[str]:
        return [sys.executable, "-c", "print('engine core failed: no GPU'); raise SystemExit(3)"]


def test_a_server_that_dies_keeps_its_log_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEEP_LOGS, str(tmp_path / "logs"))
    server = _Dies(startup_timeout=30, request_timeout=5)
    with pytest.raises(VllmServerError, match="exited with code 3.*engine core failed"), server:
        pass
    kept = tmp_path / "logs" / "dies-the model.log"
    assert "engine core failed: no GPU" in kept.read_text()
    assert server._logdir is None  # its temporary folder is gone
