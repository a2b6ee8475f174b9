"""The round trip through llama.cpp's own `llama-server` (quantkit.inspection.server_checks):
passes on good artifacts (the demo, the Llama-3-header fixture, llama.cpp's vendored Hermes
and Qwen3 templates), fails with evidence that says why on broken copies, is skipped (never
passed) without a server, and never leaves a server running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.gguf_corrupt import edited_copy, rewritten_copy, set_int, set_token_type

import quantkit
from quantkit.inspection import ServerOptions, server_checks
from quantkit.inspection.gguf_meta import read_gguf_meta
from quantkit.inspection.server_checks import (
    REASONING_ROUND_TRIP,
    SERVER_TEMPLATE,
    TOOL_ROUND_TRIP,
    last_analysis,
)
from quantkit.runtime.llama_server import ENV_VAR, find_llama_server

CONTROL = 3
TOOL_USE_KEY = "tokenizer.chat_template.tool_use"
# Valid Jinja2 (Python parses it; so does transformers) that llama.cpp's Jinja engine cannot
# parse: `{% with %}` is an "Unknown statement" to it.
SERVER_UNPARSABLE = "{% with greeting = 'hi' %}{{ greeting }}{% endwith %}"


@pytest.fixture(scope="module")
def templates(reference_converter) -> Path:
    """llama.cpp's vendored real-world templates (from the pinned llama-cpp-python sdist)."""
    return reference_converter.root / "models" / "templates"


def round_trip(path: Path) -> dict[str, quantkit.inspection.Check]:
    report = quantkit.inspect(path)
    return {c.name: c for c in report.checks if c.name in server_checks.NAMES}


def assert_all_pass(checks: dict) -> None:
    assert set(checks) == set(server_checks.NAMES)
    for check in checks.values():
        assert check.passed and not check.skipped, (check.name, check.evidence)


# --- good artifacts ----------------------------------------------------------------------


def test_demo_round_trip_passes(demo_q8: Path) -> None:
    checks = round_trip(demo_q8)
    assert_all_pass(checks)
    assert "templates (default, tool_use)" in checks[SERVER_TEMPLATE].evidence
    assert "eos_token '<|im_end|>'" in checks[SERVER_TEMPLATE].evidence
    tool = checks[TOOL_ROUND_TRIP].evidence
    assert "tool_mode JSON_NATIVE" in tool and "per_call_start '<tool_call>" in tool
    assert "finish_reason tool_calls, tool_calls " in tool and "rendered: True" in tool
    assert "prefilling" in tool  # how the call was made is said
    # The demo's template has no thinking switch: the server cannot see reasoning markers,
    # and the check says so rather than pretending the thought is parsed.
    reasoning = checks[REASONING_ROUND_TRIP].evidence
    assert "finds no reasoning markers" in reasoning and "-> '<think>'" in reasoning


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "turn_end"),
    [("llama31_model", "<|eot_id|>"), ("qwen3_model", "<|im_end|>")],
    ids=["llama3-header", "chatml-on-llama31-tokenizer"],
)
def test_random_weight_fixtures_round_trip_passes(
    fixture: str, turn_end: str, request: pytest.FixtureRequest, q8_gguf
) -> None:
    """The Llama-3-header format (Hermes 4) and ChatML on the Llama 3.1 tokenizer (Hermes
    3's layout), random weights: the prefill and the biases make even these call."""
    gguf = q8_gguf(request.getfixturevalue(fixture))  # export_gguf's Q8_0, once a session
    checks = round_trip(gguf)
    assert_all_pass(checks)
    assert f"eos_token '{turn_end}'" in checks[SERVER_TEMPLATE].evidence
    assert "finish_reason tool_calls" in checks[TOOL_ROUND_TRIP].evidence


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    ],
)
def test_vendored_hermes_tool_use_templates_pass(
    demo_q8: Path, templates: Path, name: str, tmp_path: Path
) -> None:
    """The real Hermes tool_use templates, as the Hub repos ship them (ChatML default plus
    this one as tool_use), on the trained demo model."""
    gguf = rewritten_copy(
        demo_q8, tmp_path / "h.gguf", set_strings={TOOL_USE_KEY: (templates / name).read_text()}
    )
    checks = round_trip(gguf)
    assert_all_pass(checks)
    assert "per_call_start '<tool_call>" in checks[TOOL_ROUND_TRIP].evidence


@pytest.mark.slow
def test_vendored_qwen3_template_moves_the_thought_to_reasoning_content(
    qwen3_model: Path, templates: Path, tmp_path: Path, q8_gguf
) -> None:
    """Qwen3's real template has the enable_thinking switch the server probes: its analysis
    finds <think>, and the thought comes back in reasoning_content."""
    base = q8_gguf(qwen3_model)  # read-only: the template is changed in a copy
    qwen = (templates / "Qwen-Qwen3-0.6B.jinja").read_text()
    drop = frozenset({TOOL_USE_KEY, "tokenizer.chat_templates"})
    gguf = rewritten_copy(
        base, tmp_path / "qwen.gguf", drop_keys=drop, set_strings={"tokenizer.chat_template": qwen}
    )
    checks = round_trip(gguf)
    assert_all_pass(checks)
    reasoning = checks[REASONING_ROUND_TRIP].evidence
    assert "comes back in reasoning_content" in reasoning
    assert "reasoning_content '<think>" in reasoning


# --- broken copies -----------------------------------------------------------------------


def test_tool_tags_retyped_control_fail(demo_q8: Path, tmp_path: Path) -> None:
    def retype(fields) -> None:
        set_token_type(fields, "<tool_call>", CONTROL)
        set_token_type(fields, "</tool_call>", CONTROL)

    checks = round_trip(edited_copy(demo_q8, tmp_path / "c.gguf", retype))
    tool = checks[TOOL_ROUND_TRIP]
    assert not tool.passed and tool.fatal
    assert "the server printed ''" in tool.evidence and "CONTROL" in tool.evidence
    assert checks[SERVER_TEMPLATE].passed


def test_think_retyped_control_fails_the_reasoning_round_trip(
    demo_q8: Path, tmp_path: Path
) -> None:
    gguf = edited_copy(demo_q8, tmp_path / "t.gguf", lambda f: set_token_type(f, "<think>", 3))
    reasoning = round_trip(gguf)[REASONING_ROUND_TRIP]
    assert not reasoning.passed
    assert "emitted <think>" in reasoning.evidence and "printed ''" in reasoning.evidence


def test_tool_use_template_removed_fails(demo_q8: Path, tmp_path: Path) -> None:
    gguf = rewritten_copy(demo_q8, tmp_path / "n.gguf", drop_keys=frozenset({TOOL_USE_KEY}))
    tool = round_trip(gguf)[TOOL_ROUND_TRIP]
    assert not tool.passed
    assert "finds no <tool_call> format" in tool.evidence and "tool_mode NONE" in tool.evidence
    assert "no tool_calls came back" in tool.evidence


def test_tool_use_template_the_server_cannot_parse_fails(demo_q8: Path, tmp_path: Path) -> None:
    tool_use = read_gguf_meta(demo_q8).templates["tool_use"]
    gguf = rewritten_copy(
        demo_q8, tmp_path / "u.gguf", set_strings={TOOL_USE_KEY: SERVER_UNPARSABLE + tool_use}
    )
    checks = round_trip(gguf)
    template = checks[SERVER_TEMPLATE]
    assert not template.passed
    assert "dropped the tool_use template" in template.evidence
    assert "Unknown statement: with" in template.evidence
    assert not checks[TOOL_ROUND_TRIP].passed


def test_default_template_the_server_cannot_parse_fails_and_skips_the_rest(
    demo_q8: Path, tmp_path: Path
) -> None:
    default = read_gguf_meta(demo_q8).templates["default"]
    gguf = rewritten_copy(
        demo_q8,
        tmp_path / "d.gguf",
        set_strings={"tokenizer.chat_template": SERVER_UNPARSABLE + default},
    )
    checks = round_trip(gguf)
    template = checks[SERVER_TEMPLATE]
    assert not template.passed and "did not start" in template.evidence
    assert "chat template" in template.evidence  # the server's own reason, quoted
    assert checks[TOOL_ROUND_TRIP].skipped and checks[REASONING_ROUND_TRIP].skipped


def test_eos_that_is_not_the_turn_end_fails(demo_q8: Path, tmp_path: Path) -> None:
    gguf = edited_copy(demo_q8, tmp_path / "e.gguf", lambda f: set_int(f, _EOS, 0))
    template = round_trip(gguf)[SERVER_TEMPLATE]
    assert not template.passed
    assert "eos_token is '<|endoftext|>', not the template's turn end '<|im_end|>'" in (
        template.evidence
    )


_EOS = "tokenizer.ggml.eos_token_id"


# --- no server, and the server's lifetime -------------------------------------------------


def test_without_llama_server_the_checks_are_skipped_not_passed(
    demo_q8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    report = quantkit.inspect(demo_q8)
    skipped = [c for c in report.checks if c.skipped]
    assert {c.name for c in skipped} == set(server_checks.NAMES)
    assert all(not c.passed and "quantkit doctor --build-llama-server" in c.evidence
               for c in skipped)  # fmt: skip
    assert report.passed  # nothing failed ...
    assert report.summary().endswith(", 3 skipped")  # ... and the skips are said


def test_server_checks_can_be_turned_off(demo_q8: Path) -> None:
    report = quantkit.inspect(demo_q8, server=ServerOptions(enabled=False))
    assert not {c.name for c in report.checks} & set(server_checks.NAMES)


def test_the_server_is_stopped_even_when_a_check_is_interrupted(
    demo_q8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = []

    def interrupted(server, meta):
        pids.append(server._proc.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(server_checks, "template_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server_checks.server_checks(demo_q8, read_gguf_meta(demo_q8), find_llama_server())
    assert pids and not _alive(pids[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_last_analysis_reads_the_last_block() -> None:
    log = (
        "D tool_mode: NONE\nD supports_tools: false\n=== Differential analysis complete ===\n"
        "D reasoning_mode: TAG_BASED\nD reasoning_start: '<think>'\nD tool_mode: JSON_NATIVE\n"
        "D per_call_start: '<tool_call>\n=== Differential analysis complete ===\nD other\n"
    )
    assert last_analysis(log) == {
        "reasoning_mode": "TAG_BASED",
        "reasoning_start": "'<think>'",
        "tool_mode": "JSON_NATIVE",
        "per_call_start": "'<tool_call>",
    }
    assert last_analysis("no analysis here") == {}


@pytest.mark.slow
def test_a_template_that_never_finishes_fails_within_the_startup_budget(
    demo_q8: Path, tmp_path: Path
) -> None:
    """llama-server renders every template a few dozen times at start (its analysis): on a
    template that never finishes it never becomes healthy. The check fails within the
    startup budget (15 s plus the weights at 100 MB/s) and says so."""
    import time

    from support.looping_templates import LOOPS

    gguf = rewritten_copy(
        demo_q8, tmp_path / "l.gguf", set_strings={"tokenizer.chat_template": LOOPS}
    )
    start = time.monotonic()
    checks = round_trip(gguf)
    assert time.monotonic() - start < 45
    template = checks[SERVER_TEMPLATE]
    assert not template.passed and "did not become healthy within 16 s" in template.evidence
    assert checks[TOOL_ROUND_TRIP].skipped


def test_ctrl_c_during_the_round_trip_stops_the_server(demo_q8: Path) -> None:
    """A real SIGINT to `quantkit inspect` while llama-server runs: exit 130, and the
    server (in its own session, so the terminal's Ctrl-C reaches quantkit alone) is gone."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantkit", "inspect", str(demo_q8)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        server = _wait_for_child(proc.pid, "llama-server", timeout=120)
        assert server is not None, "llama-server never started"
        time.sleep(0.5)  # inside the round trip
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not _alive(server)


def _wait_for_child(parent: int, name: str, timeout: float) -> int | None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                comm = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent and comm.startswith(name[:15]):
                return int(stat.parent.name)
        time.sleep(0.05)
    return None


def test_a_vocabulary_without_the_hermes_tags_skips_the_round_trips(
    demo_q8: Path, tmp_path: Path
) -> None:
    """Another tool's GGUF of a model without Hermes tags: nothing to call or think with,
    so those two round trips are skipped with the reason, not failed; the template one runs."""
    from support.gguf_corrupt import rename_token

    def rename(fields) -> None:
        rename_token(fields, "<tool_call>", "<tool_cell>")
        rename_token(fields, "<think>", "<thunk>")

    checks = round_trip(edited_copy(demo_q8, tmp_path / "n.gguf", rename))
    assert checks[SERVER_TEMPLATE].passed
    for name in (TOOL_ROUND_TRIP, REASONING_ROUND_TRIP):
        assert checks[name].skipped and "no <" in checks[name].evidence


def test_convert_refuses_a_bad_llama_server_before_any_work(
    demo_model: Path, tmp_path: Path
) -> None:
    """--llama-server naming something that is not an executable file is one error line
    (exit 9) before anything is built, not a crashed check on a finished artifact."""
    from support.cli_runner import run_cli

    out = tmp_path / "out"
    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "Q8_0", "--out", out,
                   "--llama-server", tmp_path / "no-such-server")  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an executable file" in lines[0], proc.stderr
    assert not any(tmp_path.glob("out*"))
