"""quantkit's vLLM round-trip checks (quantkit.inspection.vllm_checks) on a GPU machine.

Not part of the test suite: vLLM needs a CUDA GPU. Two steps, because the GPU machine this
was first run on has no package registry and no fixtures:

    python scripts/gpu_vllm_round_trip.py prepare --out MODELS   # here, on CPU
    python scripts/gpu_vllm_round_trip.py run --models MODELS --out OUT   # there

`prepare` builds small random-weight models with the real Llama 3.1 tokenizer and the
Hermes tags (a Llama-3.1-shaped one with Hermes' Llama-3-header templates, a Qwen3-shaped
one with ChatML, as Hermes 4 14B is) and converts them with `quantkit.convert` to the
artifacts users serve with vLLM: BF16 safetensors and FP8 (compressed-tensors).
`run` makes broken copies (the `tool_use` template removed; the tags marked special),
runs the checks on every folder at once (one vLLM server each, on one GPU) and writes
OUT/vllm_round_trip.json and the servers' logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 64,
        "tie_word_embeddings": True}  # fmt: skip
REAL_HERMES3_TOOL_USE = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"


def prepare(fixtures: Path, out: Path) -> None:
    import quantkit
    from fixtures.models import (
        copy_tokenizer,
        llama31_config,
        qwen3_config,
        save_random_model,
        write_generation_config,
    )

    work = out / "sources"
    llama = work / "llama31"
    save_random_model("LlamaForCausalLM", {**llama31_config(), **TINY}, llama, seed=1,
                      max_shard_size="1GB")  # fmt: skip
    write_generation_config(llama, eos=[128001, 128008, 128009])
    copy_tokenizer(fixtures / "llama31-tokenizer-v1", llama)
    qwen = work / "qwen3"
    qwen_fixture = fixtures / "qwen3-model-v1"
    eos = json.loads((qwen_fixture / "config.json").read_text())["eos_token_id"]
    save_random_model("Qwen3ForCausalLM", {**qwen3_config(eos_id=eos), **TINY}, qwen, seed=2,
                      max_shard_size="1GB")  # fmt: skip
    shutil.copy2(qwen_fixture / "generation_config.json", qwen)
    for item in qwen_fixture.iterdir():
        if "tokenizer" in item.name or "chat_template" in item.name:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, qwen / item.name)
    no_eval = quantkit.EvalOptions(enabled=False)
    targets = {
        "llama31-bf16": (llama, dict(format="safetensors", quant="BF16")),
        "llama31-fp8": (llama, dict(format="fp8", quant="FP8_DYNAMIC")),
        "qwen3-bf16": (qwen, dict(format="safetensors", quant="BF16")),
    }
    for name, (source, options) in targets.items():
        quantkit.convert(source, out=out / name, evaluation=no_eval, **options)
    template = fixtures / "reference-converter"
    found = sorted(template.glob(f"*/models/templates/{REAL_HERMES3_TOOL_USE}"))
    shutil.copy2(found[0], out / REAL_HERMES3_TOOL_USE)
    shutil.rmtree(work)


# --- run (on the GPU machine) ------------------------------------------------------------


def _set_template(folder: Path, name: str, text: str | None) -> None:
    """Replace (or with None remove) one named chat template, in whichever layout the
    folder keeps it (transformers 5's jinja files or tokenizer_config.json's list)."""
    jinja = folder / "additional_chat_templates" / f"{name}.jinja"
    if jinja.is_file():
        if text is None:
            jinja.unlink()
        else:
            jinja.write_text(text, encoding="utf-8")
        return
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    entries = [t for t in config["chat_template"] if t["name"] != name]
    if text is not None:
        entries.append({"name": name, "template": text})
    config["chat_template"] = entries
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1))


def _mark_tags_special(folder: Path) -> None:
    tags = {"<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>",
            "</tool_response>", "<tools>", "</tools>"}  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = folder / name
        data = json.loads(path.read_text())
        entries = data.get("added_tokens") or list(data.get("added_tokens_decoder", {}).values())
        for entry in entries:
            if entry["content"] in tags:
                entry["special"] = True
        path.write_text(json.dumps(data, ensure_ascii=False))


def _variants(models: Path, work: Path) -> dict[str, Path]:
    folders = {}
    for name in ("llama31-bf16", "llama31-fp8", "qwen3-bf16"):
        folders[name] = models / name
    real = (models / REAL_HERMES3_TOOL_USE).read_text(encoding="utf-8")
    for name, edit in (
        ("llama31-bf16-real-hermes3-tool-use", lambda f: _set_template(f, "tool_use", real)),
        ("llama31-bf16-no-tool-use (broken)", lambda f: _set_template(f, "tool_use", None)),
        ("llama31-bf16-tags-special", _mark_tags_special),
    ):
        folder = work / name.split(" ")[0]
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(models / "llama31-bf16", folder)
        edit(folder)
        folders[name] = folder
    return folders


def run(models: Path, out: Path) -> int:
    # Once, before the threads race through transformers' lazy imports.
    from transformers import AutoTokenizer  # noqa: F401

    from quantkit.inspection.vllm_checks import vllm_checks
    from quantkit.runtime.vllm_server import find_vllm

    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUANTKIT_KEEP_SERVER_LOGS", str(out / "logs"))
    runtime, why = find_vllm()
    report: dict = {"vllm": runtime.__dict__ if runtime else why, "artifacts": {}}
    folders = _variants(models, Path("/tmp/quantkit-vllm-variants"))

    def one(item: tuple[str, Path]) -> tuple[str, dict]:
        name, folder = item
        start = time.perf_counter()
        checks = vllm_checks(folder)
        return name, {"seconds": round(time.perf_counter() - start, 1),
                      "checks": [c.__dict__ for c in checks]}  # fmt: skip

    with ThreadPoolExecutor(len(folders)) as pool:
        for name, result in pool.map(one, folders.items()):
            report["artifacts"][name] = result
            print(name, [(c["name"], c["passed"]) for c in result["checks"]], flush=True)
    (out / "vllm_round_trip.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--fixtures", type=Path, default=ROOT / ".cache" / "test-fixtures")
    prep.add_argument("--out", type=Path, required=True)
    go = sub.add_parser("run")
    go.add_argument("--models", type=Path, required=True)
    go.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.fixtures, args.out)
        return 0
    return run(args.models, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
