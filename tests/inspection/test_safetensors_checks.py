"""`quantkit.inspect` on safetensors folders (BF16 and FP8 of the demo model), and copies
with a dropped added token, an altered template and a wrong eos that must be caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import quantkit
from quantkit.backends.safetensors.backend import make_safetensors
from quantkit.inspection.options import ServerOptions
from quantkit.inspection.vllm_checks import NAMES as VLLM_NAMES
from quantkit.source.model import load_source


@pytest.fixture(scope="module")
def demo_bf16(demo_model: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo-bf16")
    make_safetensors(load_source(demo_model), "safetensors", "BF16", out, verify=False)
    return out


def _copy(folder: Path, dest: Path) -> Path:
    """A copy whose weights are symlinks (only tokenizer files get edited)."""
    dest.mkdir()
    for path in folder.iterdir():
        if path.suffix == ".safetensors":
            (dest / path.name).symlink_to(path)
        elif path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)
    return dest


def failed(report) -> dict[str, str]:
    return {c.name: c.evidence for c in report.failed}


@pytest.mark.parametrize("against", [True, False], ids=["against-source", "standalone"])
def test_bf16_folder_passes(demo_bf16: Path, demo_model: Path, against: bool) -> None:
    report = quantkit.inspect(demo_bf16, demo_model if against else None)
    assert report.passed, report.failed
    assert report.kind == "safetensors"
    names = {c.name for c in report.checks}
    assert names >= {
        "special tokens single ids",
        "generation_config eos is the turn end",
        "BOS and PAD tokens",
        "chat templates render identically",
        "tokenization parity",
    }
    assert ("chat templates byte-identical" if against else "chat templates present") in names
    # vLLM's round trip (tests/inspection/test_vllm_checks.py): no vLLM here, so skipped
    # with the reason, never passed.
    vllm = [c for c in report.checks if c.name in VLLM_NAMES]
    assert len(vllm) == 3 and all(c.skipped and not c.passed for c in vllm)


@pytest.mark.slow
def test_fp8_folder_passes(demo_model: Path, tmp_path: Path) -> None:
    make_safetensors(load_source(demo_model), "fp8", "FP8_DYNAMIC", tmp_path, verify=False)
    assert "quantization_config" in json.loads((tmp_path / "config.json").read_text())
    report = quantkit.inspect(tmp_path, demo_model)
    assert report.passed, report.failed


def test_dropped_added_token_is_caught(demo_bf16: Path, demo_model: Path, tmp_path: Path) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    path = bad / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<think>"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for against in (demo_model, None):
        evidence = failed(quantkit.inspect(bad, against))["special tokens single ids"]
        assert "'<think>' (id 49158) is in tokenizer_config.json but missing from" in evidence


def test_altered_template_is_caught(demo_bf16: Path, demo_model: Path, tmp_path: Path) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    jinja = bad / "additional_chat_templates" / "tool_use.jinja"
    jinja.write_text(jinja.read_text().replace("<tool_call>", "<tool-call>"), encoding="utf-8")
    problems = failed(quantkit.inspect(bad, demo_model))
    assert (
        "template 'tool_use' differs from the source's" in problems["chat templates byte-identical"]
    )
    assert "tool_use/user question: text differs" in problems["chat templates render identically"]
    alone = failed(quantkit.inspect(bad))
    assert "tokenizer_config.json's chat_template differs" in alone["chat templates present"]


def test_wrong_eos_is_caught(demo_bf16: Path, demo_model: Path, tmp_path: Path) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    path = bad / "generation_config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = [0]  # <|endoftext|>, not the turn end <|im_end|>
    path.write_text(json.dumps(config))
    evidence = failed(quantkit.inspect(bad, demo_model))["generation_config eos is the turn end"]
    assert "lacks the turn end '<|im_end|>' (id 2)" in evidence


def test_folder_without_tokenizer_is_a_clear_error(demo_bf16: Path, tmp_path: Path) -> None:
    from quantkit.inspection import ArtifactError

    bad = _copy(demo_bf16, tmp_path / "bad")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="no tokenizer.json"):
        quantkit.inspect(bad)


def test_malicious_template_is_reported_not_executed(
    demo_bf16: Path, demo_model: Path, tmp_path: Path
) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    marker = tmp_path / "pwned"
    evil = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
    (bad / "chat_template.jinja").write_text(evil, encoding="utf-8")
    for against in (demo_model, None):
        report = quantkit.inspect(bad, against)
        evidence = failed(report)["chat templates render identically"]
        assert "template 'default' tried to leave the Jinja sandbox" in evidence
    assert not marker.exists()


def test_generate_adds_a_greedy_reply_in_transformers(demo_bf16: Path) -> None:
    checks = quantkit.inspect(demo_bf16, generate=True, server=ServerOptions(enabled=False)).checks
    last = checks[-1]
    assert last.name == "greedy generation stops" and not last.fatal
    assert last.passed and "stopped at id 2" in last.evidence


# --- review findings ---------------------------------------------------------------------


def test_folder_without_tokenizer_config_is_inspected(demo_bf16: Path, tmp_path: Path) -> None:
    """tokenizer_config.json is optional to loaders; its absence is evidence, not a crash."""
    bad = _copy(demo_bf16, tmp_path / "bad")
    (bad / "tokenizer_config.json").unlink()
    report = quantkit.inspect(bad)
    names = {c.name for c in report.checks}
    assert "chat templates present" in names and "BOS and PAD tokens" in names


def test_dropped_hermes_tag_is_caught_without_a_source(demo_bf16: Path, tmp_path: Path) -> None:
    """<tool_call> dropped from tokenizer.json and, consistently, from tokenizer_config.json's
    added_tokens_decoder: the two files agree, but the tool_use template writes a tag that is
    no longer one token."""
    bad = _copy(demo_bf16, tmp_path / "bad")
    path = bad / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<tool_call>"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config_path = bad / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config["added_tokens_decoder"]
    config["added_tokens_decoder"] = {
        k: v for k, v in decoder.items() if v["content"] != "<tool_call>"
    }
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    report = quantkit.inspect(bad)
    evidence = failed(report)["special tokens single ids"]
    assert "template 'tool_use' writes '<tool_call>' but it is not one token" in evidence
    assert "tokenizer.json lacks it as an added token" in evidence


def test_bos_pad_without_a_source_checks_the_files_agree(demo_bf16: Path, tmp_path: Path) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    path = bad / "generation_config.json"
    config = json.loads(path.read_text())
    config["bos_token_id"] = 0
    path.write_text(json.dumps(config))
    evidence = failed(quantkit.inspect(bad))["BOS and PAD tokens"]
    assert (
        "generation_config.json's bos_token_id is 0, tokenizer_config.json's bos_token "
        "'<|im_start|>' is id 1" in evidence
    )


def test_bos_added_where_the_source_adds_none_is_caught(
    demo_bf16: Path, demo_model: Path, tmp_path: Path
) -> None:
    bad = _copy(demo_bf16, tmp_path / "bad")
    path = bad / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    seq = {"Sequence": {"id": "A", "type_id": 0}}
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            data["post_processor"],
            {
                "type": "TemplateProcessing",
                "single": [bos, seq],
                "pair": [bos, seq, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {
                    "<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}
                },
            },
        ],
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    evidence = failed(quantkit.inspect(bad, demo_model))["BOS and PAD tokens"]
    assert "transformers adds BOS to prompts, the source tokenizer does not" in evidence


# --- chat templates past the render limits -------------------------------------------------


@pytest.mark.slow
def test_looping_templates_fail_the_checks_within_seconds(demo_model: Path, tmp_path: Path):
    """The demo folder with a default template that loops for ever and a tool_use template
    that writes without end, inspected against itself by the CLI: the subprocess timeout
    fails the test where rendering had no limits (it hung)."""
    import time

    from support.cli_runner import run_cli
    from support.looping_templates import looping_model

    bad = looping_model(demo_model, tmp_path / "looping")
    start = time.monotonic()
    proc = run_cli("inspect", bad, "--against", bad, "--json", timeout=240)
    elapsed = time.monotonic() - start
    assert proc.returncode == 11, proc.stderr
    evidence = {c["name"]: c["evidence"] for c in json.loads(proc.stdout)["checks"]
                if not c["passed"]}  # fmt: skip
    renders = evidence["chat templates render identically"]
    assert "template 'default' did not finish rendering within 3 s" in renders  # RENDER_SECONDS
    assert "template 'tool_use' rendered more than 4 MB (its output)" in renders
    assert "did not finish rendering" in evidence["generation_config eos is the turn end"]
    # One timeout per template, not one per rendering (26 renderings x 2 sides).
    assert elapsed < 70, elapsed
