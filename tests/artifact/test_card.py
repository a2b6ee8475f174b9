"""The model card and Modelfile of a converted demo artifact, and `quantkit upload
--dry-run` (writes the card, lists the files, touches no network)."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from quantkit.artifact.card import CARD_MARKER, write_model_card
from quantkit.artifact.card_facts import parse_front_matter
from quantkit.artifact.modelfile import go_template, render_modelfile, template_format
from quantkit.formats.chat_template import render
from quantkit.hub.publish import publish

REPO = "alice/demo-Q4_K_M-GGUF"


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dry run tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_TOKEN", "hf_dry_run_token_never_used")


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_dry_run_writes_the_card_and_sends_nothing(demo_artifact: Path, no_network) -> None:
    result = publish(demo_artifact, REPO, dry_run=True)
    gguf = next(demo_artifact.glob("*.gguf")).name
    assert result.dry_run and not result.verified
    assert [f["name"] for f in result.files] == [gguf, "Modelfile", "README.md", "manifest.json"]
    assert result.token_source == "HF_TOKEN"
    readme = (demo_artifact / "README.md").read_text()
    assert CARD_MARKER in readme and "hf_dry_run_token_never_used" not in readme
    assert (demo_artifact / "Modelfile").is_file()


def test_dry_run_on_the_command_line(demo_artifact: Path, no_network) -> None:
    from typer.testing import CliRunner

    from quantkit.cli import app

    done = CliRunner().invoke(app, ["upload", str(demo_artifact), "--repo", REPO, "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "dry run: would upload" in done.output and "nothing was sent" in done.output
    assert "hf_dry_run_token_never_used" not in done.output


@pytest.mark.slow
def test_dry_run_plans_the_split_of_an_oversize_gguf(demo_artifact, no_network, monkeypatch):
    from quantkit.hub import publish as publish_module

    monkeypatch.setattr(publish_module, "MAX_FILE_BYTES", 60_000_000)
    monkeypatch.setattr(publish_module, "SHARD_BYTES", 40_000_000)
    gguf = next(demo_artifact.glob("*.gguf"))
    result = publish(demo_artifact, REPO, dry_run=True)
    assert len(result.splits) == 1 and len(result.splits[0]["shards"]) == 3
    assert gguf.is_file() and not list(demo_artifact.glob("*-of-*.gguf"))  # nothing written
    assert "all 3 shards" in (demo_artifact / "README.md").read_text()


def test_card_metadata(demo_artifact: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    source = tmp_path / "source"
    shutil.copytree(_manifest(demo_artifact)["source"]["requested"], source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# Source\n")
    manifest = _manifest(demo_artifact)
    manifest["source"]["requested"] = str(source)
    _write_manifest(demo_artifact, manifest)
    result = write_model_card(demo_artifact, REPO, base_model="HuggingFaceTB/SmolLM2-135M")
    text = result.readme.read_text()
    meta = parse_front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0" and result.license == "apache-2.0"
    assert {"gguf", "quantkit", "chatml", "tool-use", "reasoning"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "gguf"
    card = ModelCard(text)  # huggingface_hub reads it as a card
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_unknown_source_id_and_licence_are_said_not_guessed(demo_artifact: Path) -> None:
    result = write_model_card(demo_artifact, REPO)
    meta = parse_front_matter(result.readme.read_text())
    assert "base_model" not in meta and meta["license"] == "unknown"
    assert any("--base-model" in note for note in result.notes)


def test_hub_source_id_from_the_manifest(demo_artifact: Path) -> None:
    manifest = _manifest(demo_artifact)
    manifest["source"].update(repo_id="NousResearch/Hermes-3-Llama-3.1-8B", requested="x/y")
    _write_manifest(demo_artifact, manifest)
    meta = parse_front_matter(write_model_card(demo_artifact, REPO).readme.read_text())
    assert meta["base_model"] == "NousResearch/Hermes-3-Llama-3.1-8B"


def test_files_table_and_bits_per_weight(demo_artifact: Path) -> None:
    manifest = _manifest(demo_artifact)
    f = manifest["files"][0]
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    bpw = 8 * f["bytes"] / manifest["source"]["parameters"]
    assert f"| `{f['name']}` | gguf Q4_K_M | {f['bytes'] / 1e6:,.1f} MB | {bpw:.2f} |" in text


def test_quality_table_when_measured_and_when_not(demo_artifact: Path) -> None:
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    assert text.count("| not measured |") == 5
    manifest = _manifest(demo_artifact)
    manifest["quality"] = {
        "perplexity": 12.3456,
        "reference_perplexity": 11.9,
        "kld_mean": 0.04321,
        "kld_p99": 0.5,
        "top1_agreement": 0.9134,
    }
    _write_manifest(demo_artifact, manifest)
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    for row in (
        "| Perplexity of this artifact | 12.3456 |",
        "| Perplexity of the source | 11.9000 |",
        "| KL divergence from the source, mean | 0.04321 |",
        "| KL divergence from the source, 99th percentile | 0.50000 |",
        "| Top-1 token agreement with the source | 91.34% |",
    ):
        assert row in text
    assert "not measured" not in text


def test_checks_tokens_and_usage(demo_artifact: Path) -> None:
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    # As many checks as the cached artifact's manifest records (the battery grows).
    assert re.search(r"(\d+) of \1 checks passed", text)
    assert "| turn end is end-of-generation | pass | <\\|im_end\\|> (id 2)" in text
    assert re.search(r"`<think>` \(id \d+, user-defined\)", text)
    assert "Generation ends at the turn end `<|im_end|>`" in text
    assert "ChatML turn format" in text and "`tool_use`" in text
    assert f"llama-server -hf {REPO}:Q4_K_M --jinja" in text
    assert f"ollama run hf.co/{REPO}:Q4_K_M" in text and "ollama create" in text
    assert "vllm serve ./" in text and "--tool-call-parser hermes" in text


def test_the_card_says_where_llama_server_puts_the_thought(demo_artifact: Path) -> None:
    """From the reasoning round trip the convert recorded: the demo's template has no
    enable_thinking switch, so the card tells users the thought stays in the content and
    what to pass; where the server did split it out, the card says reasoning_content."""
    from quantkit.formats.chat_template import LLAMA_SERVER_NO_REASONING

    manifest = _manifest(demo_artifact)
    reasoning = next(c for c in manifest["checks"] if c["name"] == "reasoning round trip")
    assert reasoning["passed"] and "finds no reasoning markers" in reasoning["evidence"]
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    assert LLAMA_SERVER_NO_REASONING in text and "--reasoning-format none" in text
    reasoning["evidence"] = "the thought comes back in reasoning_content under deepseek"
    _write_manifest(demo_artifact, manifest)
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    assert "llama-server returns the thought in `reasoning_content`" in text
    assert LLAMA_SERVER_NO_REASONING not in text
    reasoning["skipped"], reasoning["passed"] = True, False  # not measured: nothing said
    _write_manifest(demo_artifact, manifest)
    text = write_model_card(demo_artifact, REPO).readme.read_text()
    assert "llama-server returns the thought" not in text
    assert LLAMA_SERVER_NO_REASONING not in text


def test_a_hand_written_readme_is_kept(demo_artifact: Path) -> None:
    (demo_artifact / "README.md").write_text("# mine\n")
    result = write_model_card(demo_artifact, REPO)
    assert result.readme is None and (demo_artifact / "README.md").read_text() == "# mine\n"


def _folder_artifact(
    demo_artifact: Path, folder: Path, fmt: str, quant: str, **source: str
) -> Path:
    """A folder artifact (tokenizer files, a stand-in weights file, a manifest saying
    `fmt`/`quant`) made from the demo artifact's manifest, for cards of folder formats."""
    folder.mkdir()
    requested = Path(_manifest(demo_artifact)["source"]["requested"])
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(requested / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    manifest = _manifest(demo_artifact)
    manifest["target"] = {"format": fmt, "quant": quant, "profile": None}
    manifest["files"] = [{"name": "model.safetensors", "bytes": 1000, "sha256": "0" * 64}]
    manifest["source"].update(source)
    _write_manifest(folder, manifest)
    return folder


def test_card_for_a_safetensors_artifact(demo_artifact: Path, tmp_path: Path) -> None:
    folder = _folder_artifact(demo_artifact, tmp_path / "fp8", "fp8", "FP8_DYNAMIC")
    result = write_model_card(folder, "alice/demo-FP8")
    meta = parse_front_matter(result.readme.read_text())
    assert result.modelfile is None and not (folder / "Modelfile").exists()
    assert {"fp8", "compressed-tensors"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers"
    text = result.readme.read_text()
    assert "vllm serve alice/demo-FP8" in text and "`<think>` (id" in text


# --- the Modelfile -----------------------------------------------------------------------


def test_modelfile_of_the_demo(demo_artifact: Path) -> None:
    write_model_card(demo_artifact, REPO)
    text = (demo_artifact / "Modelfile").read_text()
    gguf = next(demo_artifact.glob("*.gguf")).name
    assert f"FROM ./{gguf}\n" in text
    assert 'TEMPLATE """' in text and 'PARAMETER stop "<|im_end|>"' in text


def test_an_unrecognised_template_gives_a_modelfile_without_template() -> None:
    text, note = render_modelfile(["m.gguf"], "{{ messages[0]['content'] }}</s>", "</s>")
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "")
    assert 'PARAMETER stop "</s>"' in text and "neither ChatML nor Llama-3" in note


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
]


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_go_template_renders_like_the_jinja_template(kind: str) -> None:
    from fixtures.models import CHATML_TEMPLATE, LLAMA3_TEMPLATE

    jinja = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}[kind]
    assert template_format(jinja) == kind
    expected = render(jinja, CONVERSATION, add_generation_prompt=True, bos_token="")
    data = {
        "System": CONVERSATION[0]["content"],
        "Tools": [],
        "Messages": [
            {"Role": m["role"], "Content": m["content"], "ToolCalls": []} for m in CONVERSATION
        ],
    }
    assert GoTemplate(go_template(kind)).render(data) == expected


def test_go_template_writes_hermes_tool_calls() -> None:
    data = {
        "System": "",
        "Tools": ['{"type": "function", "function": {"name": "add"}}'],
        "Messages": [
            {"Role": "user", "Content": "add", "ToolCalls": []},
            {
                "Role": "assistant",
                "Content": "",
                "ToolCalls": [{"Function": {"Name": "add", "Arguments": '{"a": 1}'}}],
            },
            {"Role": "tool", "Content": "3", "ToolCalls": []},
        ],
    }
    out = GoTemplate(go_template("chatml")).render(data)
    assert '<tools>\n{"type": "function", "function": {"name": "add"}}\n</tools>' in out
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>' in out
    assert out.endswith("<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


class GoTemplate:
    """Just enough of Go's text/template to run the Modelfile templates quantkit writes
    (if / else if / else / range / variables / eq ne and or not len slice). No Go or
    Ollama is at hand in the tests; this checks the text and the control flow."""

    _ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

    def __init__(self, source: str) -> None:
        self.items: list[tuple[str, str]] = []
        pos = 0
        for match in self._ACTION.finditer(source):
            self.items.append(("text", source[pos : match.start()]))
            self.items.append(("action", match.group(1).strip()))
            pos = match.end()
        self.items.append(("text", source[pos:]))

    def render(self, data: dict[str, Any]) -> str:
        out: list[str] = []
        end = self._run(0, data, {"$": data}, out)
        assert end == len(self.items)
        return "".join(out)

    def _run(self, i: int, dot: Any, env: dict[str, Any], out: list[str] | None) -> int:
        """Run items from i until an unmatched else/end; return its index."""
        while i < len(self.items):
            kind, body = self.items[i]
            if kind == "text":
                if out is not None:
                    out.append(body)
                i += 1
                continue
            word = body.split(" ", 1)[0]
            if word in ("end", "else"):
                return i
            if word == "if":
                i = self._if(i, body[3:], dot, env, out)
            elif word == "range":
                i = self._range(i, body[6:], dot, env, out)
            elif re.match(r"\$\w+ :=", body):
                if out is not None:  # out None: skipping a branch, evaluate nothing
                    name, expr = body.split(":=", 1)
                    env[name.strip()] = self._eval(expr, dot, env)
                i += 1
            else:
                if out is not None:
                    out.append(str(self._eval(body, dot, env)))
                i += 1
        return i

    def _if(self, i: int, cond: str, dot, env, out) -> int:
        taken = False
        while True:
            chosen = (
                out is not None and not taken and (cond is None or bool(self._eval(cond, dot, env)))
            )
            i = self._run(i + 1, dot, env, out if chosen else None)
            taken = taken or chosen
            body = self.items[i][1]
            if body == "end":
                return i + 1
            cond = body[len("else if ") :] if body.startswith("else if ") else None

    def _range(self, i: int, spec: str, dot, env, out) -> int:
        names, _, expr = spec.rpartition(":=")
        end = self._run(i + 1, dot, dict(env), None)
        seq = self._eval(expr if names else spec, dot, env) if out is not None else []
        for index, item in enumerate(seq):
            scope = dict(env)
            if names:
                first, second = [n.strip() for n in names.split(",")]
                scope[first], scope[second] = index, item
            self._run(i + 1, item, scope, out)
        return end + 1

    def _eval(self, expr: str, dot, env) -> Any:
        tokens = re.findall(r'\(|\)|"[^"]*"|[^\s()]+', expr)
        value, rest = self._expr(tokens, dot, env)
        assert not rest, rest
        return value

    def _expr(self, tokens: list[str], dot, env) -> tuple[Any, list[str]]:
        funcs = {
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
            "and": lambda a, b: a and b,
            "or": lambda a, b: a or b,
            "not": lambda a: not a,
            "len": len,
            "slice": lambda s, start: s[start:],
        }
        head, rest = tokens[0], tokens[1:]
        if head in funcs:
            args = []
            while rest and rest[0] != ")":
                arg, rest = self._atom(rest, dot, env)
                args.append(arg)
            return funcs[head](*args), rest
        return self._atom(tokens, dot, env)

    def _atom(self, tokens: list[str], dot, env) -> tuple[Any, list[str]]:
        head, rest = tokens[0], tokens[1:]
        if head == "(":
            value, rest = self._expr(rest, dot, env)
            return value, rest[1:]
        if head.startswith('"'):
            return head[1:-1], rest
        if head.isdigit():
            return int(head), rest
        if head == ".":
            return dot, rest
        base, path = (env["$"], head[2:]) if head.startswith("$.") else (None, None)
        if base is None and head.startswith("$"):
            return env[head], rest
        base, path = (base, path) if base is not None else (dot, head[1:])
        for key in filter(None, path.split(".")):
            base = base[key]
        return base, rest


def test_an_imatrix_calibrated_artifact(demo_artifact: Path) -> None:
    """The card says the quant is imatrix-calibrated and how; the imatrix file (a .gguf
    too) is listed but is neither weights nor a shard, nor what the Modelfile loads."""
    import numpy as np

    from quantkit.artifact.manifest import file_record
    from quantkit.backends.gguf.imatrix.matrix import Imatrix, ImatrixEntry, save_imatrix

    manifest = _manifest(demo_artifact)
    artifact = manifest["files"][0]
    entry = ImatrixEntry(np.ones((1, 576), dtype=np.float32), np.array([4096.0]))
    path = save_imatrix(Imatrix({"blk.0.attn_q.weight": entry}, ("quantkit:builtin",), 8, 512),
                        demo_artifact / "demo.imatrix.gguf")  # fmt: skip
    manifest["files"].append(file_record(path, format="gguf", quant="imatrix", role="imatrix"))
    manifest["imatrix"] = {
        "source": "computed", "file": path.name, "origin": "profile rtx4090-4bit",
        "entries": 210, "chunk_count": 8, "chunk_size": 512,
        "calibration": {"source": "builtin", "samples": 16, "seed": 0},
    }  # fmt: skip
    _write_manifest(demo_artifact, manifest)
    result = write_model_card(demo_artifact, REPO)
    text = result.readme.read_text()
    assert "## Importance matrix" in text and "imatrix-calibrated" in text
    assert "210 entries" in text and "8 chunks of 512 tokens" in text
    bpw = 8 * artifact["bytes"] / manifest["source"]["parameters"]
    row = f"| `{artifact['name']}` | gguf Q4_K_M | {artifact['bytes'] / 1e6:,.1f} MB | {bpw:.2f} |"
    assert row in text
    assert "| `demo.imatrix.gguf` | gguf imatrix |" in text
    assert "shards |" not in text and "split format" not in text
    assert f"FROM ./{artifact['name']}" in result.modelfile.read_text()


def test_card_for_an_mlx_artifact(demo_artifact: Path, tmp_path: Path) -> None:
    """MLX Hub conventions: library_name mlx, the mlx tag, quantized from the base model,
    and mlx-lm usage that applies the chat template (generate and the server)."""
    folder = _folder_artifact(
        demo_artifact, tmp_path / "mlx", "mlx", "4bit", repo_id="NousResearch/Hermes-3-Llama-3.1-8B"
    )
    result = write_model_card(folder, "alice/demo-4bit-mlx")
    meta = parse_front_matter(result.readme.read_text())
    assert result.modelfile is None
    assert meta["library_name"] == "mlx" and {"mlx", "4-bit", "quantkit"} <= set(meta["tags"])
    assert meta["base_model"] == "NousResearch/Hermes-3-Llama-3.1-8B"
    assert meta["base_model_relation"] == "quantized"
    text = result.readme.read_text()
    assert 'load("alice/demo-4bit-mlx")' in text and "tokenizer.apply_chat_template(" in text
    assert "mlx_lm.server --model alice/demo-4bit-mlx" in text and "vllm serve" not in text
    assert "`<think>` (id" in text
