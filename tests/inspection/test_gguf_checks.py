"""`quantkit.inspect` on GGUF artifacts: quantkit's own (Q8_0, Q4_K_M, a split set, the
Llama-3.1 fixture with rope_freqs, Qwen3), llama.cpp's own converter's, and corrupted copies
that must each be caught with a message a user understands."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.gguf_corrupt import (
    edited_copy,
    rename_token,
    replace_in_string,
    rewritten_copy,
    set_int,
    set_token_type,
)

import quantkit
from quantkit.backends.gguf.options import GGUFOptions
from quantkit.evaluation.options import EvalOptions
from quantkit.inspection import ArtifactError, ServerOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality
# These tests are about the token, template and rope checks; the llama-server round trip on
# the same kinds of broken copies is tests/inspection/test_server_checks.py's (two tests
# here keep it, where a broken tag must fail both).
NO_SERVER = ServerOptions(enabled=False)

CONTROL, USER_DEFINED = 3, 4
TOOL_USE_KEY = "tokenizer.chat_template.tool_use"


@pytest.fixture(scope="module")
def llama31_q8(llama31_model: Path, q8_gguf) -> Path:
    return q8_gguf(llama31_model)  # the session's: tests/support/models.py


def inspect_checks(artifact, against=None, **kwargs):
    return quantkit.inspect(artifact, against, server=NO_SERVER, **kwargs)


def checks(report) -> dict[str, object]:
    return {c.name: c for c in report.checks}


def failed(report) -> dict[str, str]:
    return {c.name: c.evidence for c in report.failed}


# --- artifacts that must pass ------------------------------------------------------------


@pytest.mark.parametrize("against", [True, False], ids=["against-source", "standalone"])
def test_demo_q8_passes(demo_q8: Path, demo_model: Path, against: bool) -> None:
    report = inspect_checks(demo_q8, demo_model if against else None)
    assert report.passed, report.failed
    assert report.kind == "gguf" and report.files == (str(demo_q8),)
    by_name = checks(report)
    assert set(by_name) >= {
        "special tokens single ids",
        "token types follow the policy",
        "turn end is end-of-generation",
        "BOS and PAD tokens",
        "chat templates render identically",
        "tokenization parity",
    }
    assert "<|im_end|> (id 2)" in by_name["turn end is end-of-generation"].evidence
    renders = by_name["chat templates render identically"].evidence
    assert "2 templates x 13 conversations" in renders
    if against:
        assert "chat templates byte-identical" in by_name
        assert "25 added tokens of the source" in by_name["special tokens single ids"].evidence
        assert "transformers (source) and llama.cpp" in renders
    else:
        assert "chat templates present" in by_name
        assert "round-trip" in by_name["tokenization parity"].evidence


def test_q4_k_m_artifact_folder_passes(demo_artifact_cached: Path, demo_model: Path) -> None:
    """A convert output folder (GGUF + manifest) is accepted as the artifact."""
    report = inspect_checks(demo_artifact_cached, demo_model)
    assert report.passed, report.failed
    assert report.files[0].endswith("-Q4_K_M.gguf")


@pytest.mark.slow
def test_llama31_rope_freqs_equal_the_source(llama31_q8: Path, llama31_model: Path) -> None:
    report = inspect_checks(llama31_q8, llama31_model)
    assert report.passed, report.failed
    rope = checks(report)["rope_freqs"]
    assert rope.passed and rope.fatal and "llama3 scaling (factor 8)" in rope.evidence
    assert "128009" in checks(report)["turn end is end-of-generation"].evidence
    markers = checks(report)["token types follow the policy"].evidence
    assert "<|eot_id|>" in markers and "<|start_header_id|>" in markers
    standalone = inspect_checks(llama31_q8)
    assert standalone.passed, standalone.failed
    assert "consistent with rope.dimension_count 64" in checks(standalone)["rope_freqs"].evidence


@pytest.mark.slow
def test_qwen3_passes(qwen3_model: Path, q8_gguf) -> None:
    path = q8_gguf(qwen3_model)
    report = inspect_checks(path, qwen3_model)
    assert report.passed, report.failed
    assert "rope_freqs" not in {c.name for c in report.checks if c.fatal}
    assert "<|im_end|>" in checks(report)["turn end is end-of-generation"].evidence


def test_split_set_passes_from_any_shard(demo_q8: Path, demo_model: Path, tmp_path: Path) -> None:
    from quantkit.formats.gguf_split import split_gguf

    shards = split_gguf(demo_q8, 60 * 10**6, tmp_path)
    assert len(shards) == 3
    report = inspect_checks(shards[1], demo_model)
    assert report.passed, report.failed
    assert report.files == tuple(str(s) for s in shards)
    shards[2].unlink()
    with pytest.raises(ArtifactError, match="incomplete.*00003-of-00003"):
        inspect_checks(shards[0], demo_model)


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("model", ["llama31_model", "qwen3_model", "demo_model"])
def test_llama_cpp_converter_gguf_passes(
    reference_gguf, model: str, request: pytest.FixtureRequest
) -> None:
    """A third-party artifact: llama.cpp's own convert_hf_to_gguf.py output."""
    source = request.getfixturevalue(model)
    path = reference_gguf(source, "q8_0")
    report = inspect_checks(path, source)
    assert report.passed, report.failed
    if model == "llama31_model":
        assert checks(report)["rope_freqs"].passed and checks(report)["rope_freqs"].fatal


@pytest.mark.slow
@pytest.mark.reference
def test_llama_cpp_converter_hides_special_tags_and_is_caught(
    reference_gguf, llama31_model_special_tags: Path
) -> None:
    """Where the source marks the Hermes tags special, llama.cpp's converter types them
    CONTROL: llama-server would then strip <tool_call> from replies. That is the bug."""
    path = reference_gguf(llama31_model_special_tags, "q8_0")
    report = quantkit.inspect(path, llama31_model_special_tags)
    # ... and llama-server hides them: the round trips fail too (server_checks).
    assert set(failed(report)) == {
        "token types follow the policy", "tool-call round trip", "reasoning round trip"
    }
    evidence = failed(report)["token types follow the policy"]
    assert "'<tool_call>'" in evidence and "is CONTROL, the policy says USER_DEFINED" in evidence


# --- corrupted copies that must fail -----------------------------------------------------


@pytest.mark.parametrize("against", [True, False], ids=["against-source", "standalone"])
def test_think_retyped_control_is_caught(
    demo_q8: Path, demo_model: Path, tmp_path: Path, against: bool
) -> None:
    bad = edited_copy(demo_q8, tmp_path / "b.gguf", lambda f: set_token_type(f, "<think>", CONTROL))
    report = quantkit.inspect(bad, demo_model if against else None)
    assert set(failed(report)) == {"token types follow the policy", "reasoning round trip"}
    evidence = failed(report)["token types follow the policy"]
    assert "'<think>' (id 49158) is CONTROL, the policy says USER_DEFINED" in evidence
    assert "parsers never see it" in evidence


def test_turn_marker_retyped_user_defined_is_caught(demo_q8: Path, tmp_path: Path) -> None:
    bad = edited_copy(
        demo_q8, tmp_path / "b.gguf", lambda f: set_token_type(f, "<|im_start|>", USER_DEFINED)
    )
    evidence = failed(inspect_checks(bad))["token types follow the policy"]
    assert "'<|im_start|>' (id 1) is USER_DEFINED, the policy says CONTROL" in evidence


@pytest.mark.slow
def test_token_override_is_respected_by_convert(demo_model: Path, tmp_path: Path) -> None:
    """--token-type '<think>=control' is the user's choice: convert's checks use the policy
    the GGUF was written with, so the artifact is not quarantined."""
    result = quantkit.convert(
        demo_model, out=tmp_path / "o", format="gguf", quant="Q8_0", evaluation=NO_EVAL,
        gguf=GGUFOptions(token_types={"<think>": "control"}),
    )  # fmt: skip
    by_name = {c["name"]: c for c in result.checks}
    assert by_name["token types follow the policy"]["passed"], by_name
    standalone = inspect_checks(result.out)  # the documented policy, without the override
    assert "'<think>'" in failed(standalone)["token types follow the policy"]


def test_renamed_token_that_splits_is_caught(
    demo_q8: Path, demo_model: Path, tmp_path: Path
) -> None:
    bad = edited_copy(demo_q8, tmp_path / "b.gguf", lambda f: rename_token(f, "<think>", "<thonk>"))
    problems = failed(inspect_checks(bad, demo_model))
    assert (
        "'<think>' (id 49158) is split into [44, 17400, 46]"
        in problems["special tokens single ids"]
    )
    assert "tokenization parity" in problems and "chat templates render identically" in problems
    alone = failed(inspect_checks(bad))
    assert (
        "'<think>' is missing from the vocabulary while its pair is there"
        in alone["token types follow the policy"]
    )


def test_altered_template_is_caught(demo_q8: Path, demo_model: Path, tmp_path: Path) -> None:
    bad = edited_copy(
        demo_q8,
        tmp_path / "b.gguf",
        lambda f: replace_in_string(f, TOOL_USE_KEY, "<tool_response>", "<tool_resp0nse>"),
    )
    problems = failed(inspect_checks(bad, demo_model))
    assert (
        "template 'tool_use' differs from the source at character"
        in problems["chat templates byte-identical"]
    )
    assert "tool_use/tool responses: text differs" in problems["chat templates render identically"]


def test_removed_template_is_caught(demo_q8: Path, demo_model: Path, tmp_path: Path) -> None:
    bad = rewritten_copy(demo_q8, tmp_path / "b.gguf", drop_keys=frozenset({TOOL_USE_KEY}))
    problems = failed(inspect_checks(bad, demo_model))
    assert (
        "template 'tool_use' of the source is missing" in problems["chat templates byte-identical"]
    )
    assert (
        "template 'tool_use' is missing in llama.cpp"
        in problems["chat templates render identically"]
    )
    no_default = rewritten_copy(
        demo_q8,
        tmp_path / "c.gguf",
        drop_keys=frozenset({"tokenizer.chat_template", TOOL_USE_KEY, "tokenizer.chat_templates"}),
    )
    alone = failed(inspect_checks(no_default))
    assert "no default chat template" in alone["chat templates present"]


@pytest.mark.slow
def test_eos_at_end_of_text_is_caught(llama31_q8: Path, llama31_model: Path, tmp_path: Path):
    bad = edited_copy(
        llama31_q8, tmp_path / "b.gguf", lambda f: set_int(f, "tokenizer.ggml.eos_token_id", 128001)
    )
    for against in (llama31_model, None):
        evidence = failed(inspect_checks(bad, against))["turn end is end-of-generation"]
        assert "EOS is '<|end_of_text|>' (id 128001), not the turn end '<|eot_id|>'" in evidence


@pytest.mark.slow
def test_removed_rope_freqs_is_caught(llama31_q8: Path, llama31_model: Path, tmp_path: Path):
    bad = rewritten_copy(
        llama31_q8, tmp_path / "b.gguf", drop_tensors=frozenset({"rope_freqs.weight"})
    )
    report = inspect_checks(bad, llama31_model)
    assert set(failed(report)) == {"rope_freqs"}
    assert "has no rope_freqs tensor" in failed(report)["rope_freqs"]
    # Without a source: llama arch, 131072 context and rope base 500000 is Llama 3.1.
    alone = inspect_checks(bad)
    assert set(failed(alone)) == {"rope_freqs"}
    evidence = failed(alone)["rope_freqs"]
    assert "looks like a Llama 3.1-style model (context_length 131072" in evidence
    assert "expected 32 llama3 scaling divisors" in evidence


def test_malicious_template_is_reported_not_executed(demo_q8: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = (
        "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
        "{%- for message in messages %}{{ message.content }}<|im_end|>{%- endfor %}"
    )
    bad = rewritten_copy(
        demo_q8, tmp_path / "b.gguf", set_strings={"tokenizer.chat_template": evil}
    )
    report = inspect_checks(bad)
    assert not report.passed
    evidence = checks(report)["chat templates render identically"].evidence
    assert "template 'default' tried to leave the Jinja sandbox" in evidence
    assert not marker.exists()


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(demo_q8: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        inspect_checks(tmp_path / "missing.gguf")
    (tmp_path / "x.gguf").write_text("not a gguf")
    with pytest.raises(ArtifactError, match="not a GGUF file"):
        inspect_checks(tmp_path / "x.gguf")
    truncated = tmp_path / "t" / "t.gguf"
    truncated.parent.mkdir()
    truncated.write_bytes(demo_q8.read_bytes()[: 2 * 10**6])
    with pytest.raises(ArtifactError, match="corrupt|cannot load|truncated"):
        inspect_checks(truncated)
    # Cut in the tensor data: the vocabulary alone would still load.
    truncated.write_bytes(demo_q8.read_bytes()[:-1000])
    with pytest.raises(ArtifactError, match="is truncated: .* its tensors need"):
        inspect_checks(truncated)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="neither a GGUF file nor a safetensors"):
        inspect_checks(empty)


@pytest.mark.slow
def test_convert_quarantines_an_artifact_that_fails_inspection(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """The real checks, not a stub: the quantizer's output is corrupted on the way
    (<think> retyped CONTROL), convert's inspection catches it, the artifact is kept as
    out.quarantine/ and VerificationError (exit 11) names the check."""
    import json

    from quantkit.backends.gguf import backend as gguf_pipeline
    from quantkit.errors import VerificationError

    real_quantize = gguf_pipeline.quantize_from_shards

    def corrupting_quantize(source, dst, *args, **kwargs):
        real_quantize(source, dst, *args, **kwargs)
        edited_copy(dst, dst.with_name("tmp.gguf"), lambda f: set_token_type(f, "<think>", 3))
        dst.with_name("tmp.gguf").replace(dst)

    monkeypatch.setattr(gguf_pipeline, "quantize_from_shards", corrupting_quantize)
    out = tmp_path / "out"
    with pytest.raises(VerificationError) as info:
        quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M", evaluation=NO_EVAL)
    assert info.value.exit_code == 11
    assert "token types follow the policy" in str(info.value)
    quarantine = tmp_path / "out.quarantine"
    assert quarantine.is_dir() and not out.exists()
    manifest = json.loads((quarantine / "manifest.json").read_text())
    bad = next(c for c in manifest["checks"] if not c["passed"])
    assert "'<think>' (id 49158) is CONTROL" in bad["evidence"]


def test_against_a_hub_repo_id_needs_only_the_tokenizer_files(
    demo_q8: Path, demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """--against owner/name fetches config and tokenizer files only: a Hub cache holding
    just those (no weights) is enough. Offline, through huggingface_hub's own cache."""
    import shutil

    import huggingface_hub.constants as hf_constants

    hub_cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--quantkit-test--demo-chat"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in demo_model.iterdir():
        if item.is_dir():
            shutil.copytree(item, snapshot / item.name)
        elif item.suffix != ".safetensors":
            shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    report = inspect_checks(demo_q8, "quantkit-test/demo-chat")
    assert report.passed, report.failed
    assert (
        "byte-identical to the source" in checks(report)["chat templates byte-identical"].evidence
    )
    from quantkit.errors import SourceModelError

    with pytest.raises(SourceModelError, match="Could not fetch the tokenizer files"):
        inspect_checks(demo_q8, "quantkit-test/not-there")


def test_generate_adds_a_greedy_reply_in_llama_cpp(demo_q8: Path) -> None:
    """The trained demo model answers and stops at its turn end, with the GGUF's own
    template and no source."""
    report = inspect_checks(demo_q8, generate=True)
    last = checks(report)["greedy generation stops"]
    assert not last.fatal
    assert last.passed and "stopped at id 2" in last.evidence and "Paris" in last.evidence


def test_source_side_is_remembered_per_tokenizer_files(
    demo_q8: Path, demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """The second inspection against the same source does not need transformers at all;
    the same answers come back; a changed tokenizer file is a different cache entry."""
    import shutil

    from quantkit.inspection import source_cache

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    first = inspect_checks(demo_q8, demo_model)
    assert len(list((tmp_path / "cache" / "inspect-source").glob("*.json"))) == 1

    def no_transformers(*args, **kwargs):
        raise AssertionError("transformers was asked although the cache has the answers")

    monkeypatch.setattr(source_cache, "TransformersSide", no_transformers)
    second = inspect_checks(demo_q8, demo_model)
    assert second.to_dict()["checks"] == first.to_dict()["checks"]
    changed = tmp_path / "src"
    shutil.copytree(demo_model, changed, ignore=shutil.ignore_patterns("*.safetensors"))
    jinja = changed / "chat_template.jinja"
    jinja.write_text(jinja.read_text() + " ", encoding="utf-8")
    with pytest.raises(AssertionError, match="cache has the answers"):
        inspect_checks(demo_q8, changed)


# --- review findings: each one a case that passed or crashed before ----------------------

NORMAL = 1


@pytest.mark.parametrize("against", [True, False], ids=["against-source", "standalone"])
def test_turn_end_retyped_normal_is_caught(
    demo_q8: Path, demo_model: Path, tmp_path: Path, against: bool
) -> None:
    """<|im_end|> typed NORMAL: llama.cpp silently retypes it at load, but the file says it
    is printed text. Without a source it used to drop out of the turn markers entirely."""
    bad = edited_copy(
        demo_q8, tmp_path / "b.gguf", lambda f: set_token_type(f, "<|im_end|>", NORMAL)
    )
    report = inspect_checks(bad, demo_model if against else None)
    assert not report.passed
    evidence = failed(report)["token types follow the policy"]
    assert "'<|im_end|>' (id 2) is NORMAL, the policy says CONTROL" in evidence
    # The turn end is still found (whatever its type) and still ends generation.
    turn_end = checks(report)["turn end is end-of-generation"]
    assert turn_end.passed and "<|im_end|> (id 2)" in turn_end.evidence


def test_template_without_a_turn_end_fails(demo_q8: Path, tmp_path: Path) -> None:
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    bad = rewritten_copy(
        demo_q8, tmp_path / "b.gguf", set_strings={"tokenizer.chat_template": plain}
    )
    check = checks(inspect_checks(bad))["turn end is end-of-generation"]
    assert not check.passed and check.fatal
    assert "writes no special token after an assistant reply" in check.evidence


def test_generate_reports_failures_as_checks(demo_q8: Path, tmp_path: Path) -> None:
    """--generate never raises for the artifact: weights llama.cpp cannot load and a
    template that refuses to render are failed checks."""
    no_norm = rewritten_copy(
        demo_q8, tmp_path / "n.gguf", drop_tensors=frozenset({"output_norm.weight"})
    )
    report = inspect_checks(no_norm, generate=True)
    last = checks(report)["greedy generation stops"]
    assert not last.passed
    assert "llama.cpp cannot load the weights" in last.evidence and not report.passed
    evil = "{{ cycler.__init__.__globals__.os.getcwd() }}{{ messages[0].content }}<|im_end|>"
    escaping = rewritten_copy(
        demo_q8, tmp_path / "e.gguf", set_strings={"tokenizer.chat_template": evil}
    )
    last = checks(inspect_checks(escaping, generate=True))["greedy generation stops"]
    assert not last.passed
    assert "cannot render the question" in last.evidence


def test_non_fatal_failure_fails_the_report() -> None:
    """ "Exit 0 only when every check passes": `fatal` is convert's business only."""
    from quantkit.inspection import Check, InspectReport

    report = InspectReport(
        "x.gguf", "gguf", ("x.gguf",), None,
        (Check("a", True, "ok"), Check("greedy generation stops", False, "no stop", False)),
    )  # fmt: skip
    assert not report.passed
    assert [c.name for c in report.failed] == ["greedy generation stops"]
    assert report.summary() == "1 of 2 checks failed: greedy generation stops"
    assert report.to_dict()["passed"] is False


def test_imatrix_gguf_is_named_not_called_corrupt(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "demo.imatrix.gguf"
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type("imatrix")
    writer.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(64, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ArtifactError, match="is an importance matrix .*not a model") as info:
        inspect_checks(path)
    assert "corrupt" not in str(info.value) and "truncated" not in str(info.value)


def test_rope_freqs_not_f32_is_a_failed_check(demo_q8: Path, tmp_path: Path) -> None:
    """llama.cpp's rope takes F32 frequency factors only; an F16 rope_freqs used to stop
    the inspection with exit 3 instead of failing the rope check."""
    import numpy as np

    bad = rewritten_copy(
        demo_q8, tmp_path / "b.gguf", add_tensors={"rope_freqs.weight": np.ones(32, np.float16)}
    )
    report = inspect_checks(bad)
    rope = failed(report)["rope_freqs"]
    assert "rope_freqs.weight is stored as F16 (ggml type 1), not F32" in rope


def test_inspection_leaves_no_file_open(demo_q8: Path, tmp_path: Path) -> None:
    import os
    import shutil

    path = tmp_path / "own.gguf"
    shutil.copyfile(demo_q8, path)
    assert inspect_checks(path).passed
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")]  # fmt: skip
    assert str(path) not in fds
    assert str(path) not in Path("/proc/self/maps").read_text()


# --- chat templates past the render limits -------------------------------------------------


def _looping_gguf(demo_q8: Path, dest: Path) -> Path:
    """The demo GGUF with the templates of support.looping_templates.looping_model, as
    converting that folder would store them (converting it on code without render limits
    would hang)."""
    from support.looping_templates import FLOODS, LOOPS

    strings = {"tokenizer.chat_template": LOOPS, TOOL_USE_KEY: FLOODS}
    return rewritten_copy(demo_q8, dest, set_strings=strings)


@pytest.mark.slow
def test_looping_templates_fail_the_gguf_checks_within_seconds(
    demo_q8: Path, demo_model: Path, tmp_path: Path
) -> None:
    """`quantkit inspect` of the GGUF, against the looping folder and alone: every
    renderer (transformers, quantkit's, llama-cpp-python's) stops; the subprocess timeout
    fails the test where rendering had no limits (it hung)."""
    import json
    import time

    from support.cli_runner import run_cli
    from support.looping_templates import looping_model

    source = looping_model(demo_model, tmp_path / "looping")
    bad = _looping_gguf(demo_q8, tmp_path / "looping.gguf")
    for against in (("--against", source), ()):
        start = time.monotonic()
        # llama-server's own handling of it: test_server_checks.py
        proc = run_cli("inspect", bad, *against, "--json", "--no-server-check", timeout=240)
        elapsed = time.monotonic() - start
        assert proc.returncode == 11, proc.stderr
        evidence = {c["name"]: c["evidence"] for c in json.loads(proc.stdout)["checks"]
                    if not c["passed"]}  # fmt: skip
        renders = evidence["chat templates render identically"]
        reason = "did not finish rendering within 3 s"  # RENDER_SECONDS
        assert f"template 'default' {reason}" in renders, renders
        assert "template 'tool_use' rendered more than 4 MB (its output)" in renders
        assert reason in evidence["turn end is end-of-generation"]
        assert elapsed < 70, elapsed


@pytest.mark.slow
def test_convert_quarantines_a_model_whose_template_loops(demo_model: Path, tmp_path: Path) -> None:
    """`quantkit convert` of the looping folder finishes: the GGUF is written (its EOS left
    as the tokenizer's), the checks fail on the templates, exit 11, OUT.quarantine/."""
    import json
    import time

    from support.cli_runner import run_cli
    from support.looping_templates import looping_model

    source = looping_model(demo_model, tmp_path / "looping")
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_cli("convert", source, "--format", "gguf", "--quant", "Q8_0", "--out", out,
                   "--no-server-check", timeout=400)  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 11, proc.stderr
    assert "chat templates render identically" in proc.stderr
    quarantine = tmp_path / "out.quarantine"
    assert quarantine.is_dir() and not out.exists()
    manifest = json.loads((quarantine / "manifest.json").read_text())
    bad = {c["name"]: c["evidence"] for c in manifest["checks"] if not c["passed"]}
    assert "did not finish rendering within" in bad["chat templates render identically"]
    assert elapsed < 200, elapsed


def test_a_template_that_is_not_jinja_is_one_error_line(demo_q8: Path, tmp_path: Path) -> None:
    """llama-cpp-python's Llama() compiles every stored template, even vocab-only: a
    template with a syntax error is an ArtifactError (exit 3, one line), not a traceback."""
    from support.cli_runner import run_cli

    bad = rewritten_copy(
        demo_q8, tmp_path / "s.gguf", set_strings={TOOL_USE_KEY: "{% for m in messages %}{{ m }"}
    )
    with pytest.raises(ArtifactError, match="not valid Jinja"):
        inspect_checks(bad)
    proc = run_cli("inspect", bad)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "not valid Jinja" in proc.stderr
