"""Bad input: every failure is one line that says what to do, a distinct exit code, and no
artifact folder that looks finished (neither OUT nor OUT.partial is left behind)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import pytest
from support import cli_runner

import quantkit
from quantkit.errors import (
    CalibrationError,
    ConversionError,
    DiskSpaceError,
    ImatrixError,
    OutputPathError,
    PlanError,
    ProfileError,
    QuantkitError,
    SourceModelError,
    UnknownPreTokenizerError,
    UnsupportedArchitectureError,
    VerificationError,
)
from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

Q8 = ["--format", "gguf", "--quant", "Q8_0"]
Q4 = ["--format", "gguf", "--quant", "Q4_K_M"]


# --- helpers ------------------------------------------------------------------------------


def run_cli(*args: object, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    # A narrow terminal: the one-line error must not be wrapped into several.
    return cli_runner.run_cli(*args, timeout=timeout, columns=50)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def copy_demo(demo_model: Path, dest: Path, *, truncate_weights: bool = False) -> Path:
    """A private copy of the demo model: small files copied, the ~270 MB safetensors file
    hard-linked (never modified through the link) or, when truncated, written anew."""
    dest.mkdir(parents=True)
    for path in demo_model.iterdir():
        target = dest / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        elif path.suffix == ".safetensors" and truncate_weights:
            with path.open("rb") as src, target.open("wb") as dst:
                dst.write(src.read(path.stat().st_size // 2))
        elif path.suffix == ".safetensors":
            link_or_copy(path, target)
        else:
            shutil.copy2(path, target)
    return dest


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def assert_nothing_written(out: Path) -> None:
    for suffix in ("", ".partial", ".quarantine"):
        assert not out.with_name(out.name + suffix).exists(), f"{out.name}{suffix} was left"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert proc.stdout.strip() == ""
    return line


TOO_SMALL_PROFILE = """\
name = "toy-cpu"
description = "A machine far too small for any model"
format = "gguf"
quant = "Q4_K_M"
runtime = "llama.cpp"

[hardware]
device = "toy"
kind = "cpu"
memory_gib = 0.01

[quality]
max_ppl_increase = 0.05
max_kld = 0.05
min_top1 = 0.9
"""


# --- each bad input through the CLI -------------------------------------------------------
# Each case builds its input under tmp_path and returns (model, extra args).


def case_missing_config(demo: Path, tmp: Path):
    model = tmp / "weights-only"
    model.mkdir()
    link_or_copy(demo / "model.safetensors", model / "model.safetensors")
    return model, Q8


def case_truncated_safetensors(demo: Path, tmp: Path):
    return copy_demo(demo, tmp / "truncated", truncate_weights=True), Q8


def case_unknown_architecture(demo: Path, tmp: Path):
    model = copy_demo(demo, tmp / "gpt2ish")
    edit_json(model / "config.json", lambda c: c.update(architectures=["GPT2LMHeadModel"]))
    return model, Q8


def case_unknown_pre_tokenizer(demo: Path, tmp: Path):
    model = copy_demo(demo, tmp / "whitespace-pretok")
    edit_json(model / "tokenizer.json", lambda t: t.update(pre_tokenizer={"type": "Whitespace"}))
    return model, Q8


def case_unknown_profile(demo: Path, tmp: Path):
    return demo, ["--profile", "no-such-gpu"]


def case_plan_does_not_fit(demo: Path, tmp: Path):
    profile = tmp / "toy-cpu.toml"
    profile.write_text(TOO_SMALL_PROFILE)
    return demo, ["--profile", str(profile)]


def case_profile_with_a_typo(demo: Path, tmp: Path):
    profile = tmp / "toy-cpu.toml"
    profile.write_text(TOO_SMALL_PROFILE.replace("memory_gib", "memmory_gib"))
    return demo, ["--profile", str(profile)]


def case_gptq_group_size(demo: Path, tmp: Path):
    # The demo's 576 input columns are not a multiple of 128: refused before any weight loads.
    return demo, ["--format", "gptq", "--group-size", "128"]


def case_fp8_quant_for_gguf(demo: Path, tmp: Path):
    return demo, ["--format", "fp8", "--quant", "Q4_K_M"]


def case_missing_calibration_file(demo: Path, tmp: Path):
    return demo, [
        "--format",
        "gptq",
        "--group-size",
        "64",
        "--calibration",
        str(tmp / "nope.jsonl"),
    ]


def case_unknown_quant(demo: Path, tmp: Path):
    return demo, ["--format", "gguf", "--quant", "Q4_K_X"]


def case_imatrix_quant(demo: Path, tmp: Path):
    return demo, ["--format", "gguf", "--quant", "IQ2_XS", "--imatrix", "none"]


def case_imatrix_missing_file(demo: Path, tmp: Path):
    return demo, [*Q4, "--imatrix", str(tmp / "nope.imatrix.gguf")]


def case_imatrix_corrupt_file(demo: Path, tmp: Path):
    bad = tmp / "garbage.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
    return demo, [*Q4, "--imatrix", str(bad)]


def case_imatrix_of_another_model(demo: Path, tmp: Path):
    import numpy as np

    from quantkit.backends.gguf.imatrix.matrix import Imatrix, ImatrixEntry, save_imatrix

    entry = ImatrixEntry(np.ones((1, 4096), dtype=np.float32), np.array([512.0]))
    other = save_imatrix(Imatrix({"blk.0.attn_q.weight": entry}, ("x",), 1, 512),
                         tmp / "llama-8b.imatrix.gguf")  # fmt: skip
    return demo, [*Q4, "--imatrix", str(other)]


def case_imatrix_for_q8(demo: Path, tmp: Path):
    return demo, [*Q8, "--imatrix", "auto"]


def case_imatrix_auto_too_little_text(demo: Path, tmp: Path):
    return demo, [*Q4, "--imatrix", "auto", "--calibration-samples", "1",
                  "--calibration-seq-len", "100000"]  # fmt: skip


def case_no_target(demo: Path, tmp: Path):
    return demo, []


CASES = {
    # name: (builder, exit code, what the line must say)
    "missing-config": (case_missing_config, SourceModelError.exit_code, ["config.json"]),
    "truncated-safetensors": (
        case_truncated_safetensors,
        SourceModelError.exit_code,
        ["model.safetensors", "download"],
    ),
    "unknown-architecture": (
        case_unknown_architecture,
        UnsupportedArchitectureError.exit_code,
        ["GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM"],
    ),
    "unknown-pre-tokenizer": (
        case_unknown_pre_tokenizer,
        UnknownPreTokenizerError.exit_code,
        ["pre-tokenizer", "--pre-tokenizer"],
    ),
    "unknown-profile": (
        case_unknown_profile,
        ProfileError.exit_code,
        ["no-such-gpu", "rtx4090-4bit"],
    ),
    "plan-does-not-fit": (case_plan_does_not_fit, PlanError.exit_code, ["toy-cpu", "--force"]),
    "profile-typo": (case_profile_with_a_typo, ProfileError.exit_code, ["memmory_gib"]),
    "gptq-group-size": (case_gptq_group_size, ConversionError.exit_code, ["576 columns", "32, 64"]),
    "fp8-with-gguf-quant": (case_fp8_quant_for_gguf, ConversionError.exit_code, ["Q4_K_M"]),
    "missing-calibration-file": (
        case_missing_calibration_file,
        CalibrationError.exit_code,
        ["nope.jsonl"],
    ),
    "unknown-quant": (case_unknown_quant, QuantkitError.exit_code, ["Q4_K_X", "Q4_K_M"]),
    "imatrix-none-for-iq2": (
        case_imatrix_quant,
        ImatrixError.exit_code,
        ["IQ2_XS", "importance matrix", "--imatrix"],
    ),
    "imatrix-missing-file": (
        case_imatrix_missing_file,
        ImatrixError.exit_code,
        ["nope.imatrix.gguf", "does not exist"],
    ),
    "imatrix-corrupt-file": (case_imatrix_corrupt_file, ImatrixError.exit_code, ["garbage.gguf"]),
    "imatrix-of-another-model": (
        case_imatrix_of_another_model,
        ImatrixError.exit_code,
        ["4096 columns", "576", "--imatrix auto"],
    ),
    "imatrix-for-q8": (case_imatrix_for_q8, ImatrixError.exit_code, ["Q8_0", "llama.cpp"]),
    "imatrix-auto-asked-cannot-be-made": (  # asked for: an error that names the way out
        case_imatrix_auto_too_little_text,
        CalibrationError.exit_code,
        ["--imatrix auto", "less than one imatrix chunk", "--imatrix none"],
    ),
    "no-target": (case_no_target, QuantkitError.exit_code, ["--profile", "--format"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(
    case: str, demo_model: Path, tmp_path: Path
) -> None:
    build, exit_code, needles = CASES[case]
    model, args = build(demo_model, tmp_path)
    out = tmp_path / "out"
    proc = run_cli("convert", model, *args, "--out", out)
    assert_one_line_error(proc, *needles)
    if exit_code is not None:
        assert proc.returncode == exit_code
    assert_nothing_written(out)


def test_exit_codes_are_distinct_per_kind() -> None:
    kinds = [SourceModelError, UnsupportedArchitectureError, OutputPathError, DiskSpaceError,
             ProfileError, PlanError, VerificationError, ImatrixError]  # fmt: skip
    codes = [k.exit_code for k in kinds]
    assert all(code not in (0, 1, 2) for code in codes)  # not success, generic, usage
    # Architecture and pre-tokenizer share "unsupported model" (4); the rest are distinct.
    assert len(set(codes)) == len(codes)


def test_error_line_keeps_square_brackets(demo_model: Path, tmp_path: Path) -> None:
    model, args = case_profile_with_a_typo(demo_model, tmp_path)
    proc = run_cli("convert", model, *args, "--out", tmp_path / "out")
    assert_one_line_error(proc, "[hardware]", "memmory_gib")


def test_existing_output_is_refused_and_left_alone(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("convert", demo_model, *Q8, "--out", out)
    assert_one_line_error(proc, str(out), "--out")
    assert proc.returncode == OutputPathError.exit_code
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert not out.with_name("out.partial").exists()


def test_output_inside_the_source_is_refused(demo_model: Path, tmp_path: Path) -> None:
    model = copy_demo(demo_model, tmp_path / "src")
    before = sorted(p.name for p in model.iterdir())
    proc = run_cli("convert", model, *Q8, "--out", model / "out")
    assert_one_line_error(proc, "inside")
    assert proc.returncode == OutputPathError.exit_code
    assert sorted(p.name for p in model.iterdir()) == before


def interrupt_convert(demo_model: Path, out: Path) -> tuple[int, str]:
    """Start `quantkit convert`, press Ctrl-C (SIGINT) while the GGUF is being written
    (quantized from the shards)."""
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("QUANTKIT_DEBUG", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quantkit",
            "convert",
            str(demo_model),
            *Q4,
            "--out",
            str(out),
            "--no-eval",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            # quantkit's own writer quantizing from the shards, not llama.cpp's model load,
            # where Ctrl-C lands inside ctypes callbacks (see the log-callback test above)
            ggufs = list(partial.glob("*-Q4_K_M.gguf")) if partial.is_dir() else []
            if any(p.stat().st_size > 1_000_000 for p in ggufs):
                break  # the artifact is being written
            time.sleep(0.005)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def test_interrupt_while_writing_leaves_nothing(demo_model: Path, tmp_path: Path) -> None:
    """Ctrl-C in the middle of writing the GGUF: no OUT, no OUT.partial."""
    out = tmp_path / "out"
    _, stderr = interrupt_convert(demo_model, out)
    assert "Traceback" not in stderr
    assert_nothing_written(out)


def test_ctrl_c_inside_llama_cpp_log_callback_is_not_lost() -> None:
    """Ctrl-C that lands while llama.cpp is in our log callback (loading, quantizing)
    raises inside a ctypes callback, where ctypes would swallow it: it must reach the
    caller once llama.cpp returns, not vanish."""
    import logging

    from quantkit.runtime import llama_cpp

    llama_cpp.silence_llama_cpp()

    class CtrlC(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise KeyboardInterrupt

    logger = logging.getLogger("quantkit.llama_cpp")
    handler = CtrlC()
    # setLevel, not a patched `level`: it also clears the logger's isEnabledFor cache, which
    # an earlier test's llama.cpp load may have filled with "INFO is off".
    saved_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            llama_cpp._callback(2, b"quantizing blk.0.attn_q.weight", None)  # through ctypes
            time.sleep(5)  # the interrupt arrives within _RETRY_S
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def test_interrupt_exits_130_with_a_message(demo_model: Path, tmp_path: Path) -> None:
    returncode, stderr = interrupt_convert(demo_model, tmp_path / "out")
    assert returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error:")


def test_imatrix_quant_without_one_is_refused_by_the_dry_run(
    demo_model: Path, tmp_path: Path
) -> None:
    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "IQ2_XS",
                   "--imatrix", "none", "--out", tmp_path / "out", "--dry-run")  # fmt: skip
    assert_one_line_error(proc, "IQ2_XS", "importance matrix")
    assert list(tmp_path.iterdir()) == []
    # By default such a type gets one computed: the dry run plans it.
    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "IQ2_XS",
                   "--out", tmp_path / "out", "--dry-run", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["quant"] == "IQ2_XS"
    assert list(tmp_path.iterdir()) == []


# --- in-process failures (monkeypatched) --------------------------------------------------

DiskUsage = namedtuple("DiskUsage", "total used free")


def test_too_little_disk_space_writes_nothing(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import quantkit.artifact.output_dir

    asked: list[str] = []

    def tiny_disk(path):
        asked.append(str(path))
        return DiskUsage(total=10**12, used=10**12 - 10_000, free=10_000)

    monkeypatch.setattr(quantkit.artifact.output_dir.shutil, "disk_usage", tiny_disk)
    out = tmp_path / "sub" / "out"
    with pytest.raises(DiskSpaceError) as info:
        quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M", evaluation=NO_EVAL)
    assert asked, "disk space was never checked"
    assert "GB" in str(info.value) and "--out" in str(info.value)
    assert_nothing_written(out)
    assert list(tmp_path.iterdir()) == []  # not even the parent folder


def test_enough_disk_space_is_not_refused_in_a_dry_run(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import quantkit.artifact.output_dir

    def tiny_disk(path):
        return DiskUsage(total=10**12, used=10**12 - 10_000, free=10_000)

    monkeypatch.setattr(quantkit.artifact.output_dir.shutil, "disk_usage", tiny_disk)
    result = quantkit.convert(
        demo_model, out=tmp_path / "out", format="gguf", quant="Q4_K_M", dry_run=True
    )
    assert result.dry_run and result.estimated_bytes > 10_000
    assert list(tmp_path.iterdir()) == []


class Boom(RuntimeError):
    pass


@pytest.mark.slow
def test_crash_in_the_quantizer_leaves_nothing(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from quantkit.runtime import ggml_quant

    out = tmp_path / "out"
    real = ggml_quant.quantize_rows
    seen: list[list[str]] = []

    def crash(ggml_type: str, rows, importance, **options):
        seen.append(sorted(p.name for p in (tmp_path / "out.partial").iterdir()))
        if len(seen) == 5:  # in the middle: some tensors of the artifact are written
            raise Boom("quantizer crashed")
        return real(ggml_type, rows, importance, **options)

    monkeypatch.setattr(ggml_quant, "quantize_rows", crash)
    with pytest.raises(Boom):
        quantkit.convert(
            demo_model, out=out, format="gguf", quant="Q4_K_M", verify=False, evaluation=NO_EVAL
        )
    assert seen and seen[-1] == [f"{demo_model.name}-Q4_K_M.gguf"], seen[-1:]
    assert_nothing_written(out)


def test_crash_while_writing_the_gguf_leaves_nothing(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    calls: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        calls.append((stage, done, total))
        if done == 20:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-file

    with pytest.raises(KeyboardInterrupt):
        quantkit.convert(
            demo_model, out=out, format="gguf", quant="Q8_0", verify=False, progress=progress
        )
    assert calls[-1][1] == 20 and calls[-1][2] > 20  # it really stopped part-way
    assert_nothing_written(out)


@pytest.mark.slow
def test_failed_check_quarantines_the_artifact(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import quantkit.inspection.convert_checks
    from quantkit.inspection.check import Check

    failing = Check("special tokens single ids", False, "'<think>': source id 49158, artifact [1]")

    def fake_check(path: Path, source, **kwargs):
        assert path.is_file()
        return [failing, Check("greedy generation stops", False, "did not stop", fatal=False)]

    monkeypatch.setattr(quantkit.inspection.convert_checks, "check_gguf", fake_check)
    out = tmp_path / "out"
    with pytest.raises(VerificationError) as info:
        quantkit.convert(demo_model, out=out, format="gguf", quant="Q8_0", evaluation=NO_EVAL)
    assert "special tokens single ids" in str(info.value)
    assert "greedy generation stops" not in str(info.value)  # non-fatal: not the cause
    quarantine = tmp_path / "out.quarantine"
    assert "out.quarantine" in str(info.value)
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert quarantine.is_dir()
    manifest = json.loads((quarantine / "manifest.json").read_text())
    assert failing.to_dict() in manifest["checks"]
    (record,) = manifest["files"]
    assert (quarantine / record["name"]).stat().st_size == record["bytes"]


@pytest.mark.slow
def test_failed_non_fatal_check_does_not_fail_the_convert(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import quantkit.inspection.convert_checks
    from quantkit.inspection.check import Check

    warn = Check("greedy generation stops", False, "no end-of-generation", fatal=False)
    monkeypatch.setattr(
        quantkit.inspection.convert_checks, "check_gguf", lambda path, source, **kw: [warn]
    )
    out = tmp_path / "out"
    result = quantkit.convert(demo_model, out=out, format="gguf", quant="Q8_0", evaluation=NO_EVAL)
    assert result.out == out and out.is_dir()
    assert not (tmp_path / "out.quarantine").exists()
    assert result.checks == [warn.to_dict()]
