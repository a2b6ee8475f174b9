"""The model card's "Use it" section: how to run the artifact, per format and runtime
(llama.cpp, Ollama, vLLM, transformers, mlx-lm), with the chat template applied."""

from __future__ import annotations

from typing import Any

from ..formats.chat_template import LLAMA_SERVER_NO_REASONING, LLAMA_SERVER_REASONING_PARSED
from .card_facts import TokenFacts, is_weights

# The name of quantkit.inspection.server_checks.REASONING_ROUND_TRIP (artifact sits below
# inspection: the card reads the check from the manifest by its name).
_REASONING_CHECK = "reasoning round trip"


def usage_section(
    manifest: dict[str, Any],
    files: list[dict[str, Any]],
    repo_id: str | None,
    base_model: str | None,
    facts: TokenFacts,
    has_modelfile: bool,
) -> str:
    repo = repo_id or "OWNER/NAME"
    fmt, quant = manifest["target"]["format"], manifest["target"]["quant"]
    name = repo.split("/")[-1].lower()
    out = ["## Use it"]
    if fmt == "gguf":
        ggufs = [f["name"] for f in files if is_weights(f) and f["name"].endswith(".gguf")]
        first = ggufs[0] if ggufs else f"{name}.gguf"
        plan_cmd = (manifest.get("plan") or {}).get("command")
        local = plan_cmd or f"llama-server -m {first} -c 8192 --jinja"
        out += [
            "### llama.cpp",
            "```bash\n"
            f"llama-server -hf {repo}:{quant} --jinja\n"
            f"# or, after `hf download {repo} --local-dir .`\n{local}\n```",
            "`--jinja` applies the chat template stored in the GGUF (tool calls included).",
            *_server_reasoning(manifest),
            "### Ollama",
        ]
        if len(ggufs) > 1:
            out.append(
                "Ollama does not load split GGUF files: merge them first with "
                f"`llama-gguf-split --merge {first} {name}.gguf` and use that file."
            )
        else:
            out.append(f"```bash\nollama run hf.co/{repo}:{quant}\n```")
        if has_modelfile:
            out.append(
                "The `Modelfile` here has the chat template in Ollama's syntax and the "
                f"turn-end stop:\n\n```bash\nhf download {repo} --local-dir {name}\n"
                f"cd {name} && ollama create {name} -f Modelfile && ollama run {name}\n```"
            )
        tokenizer = base_model or "<the source model's Hub id>"
        out += [
            "### vLLM",
            "vLLM's GGUF support is experimental and takes one file (not a split set); "
            "give it the source tokenizer:\n\n"
            f"```bash\nvllm serve ./{first} --tokenizer {tokenizer} \\\n"
            "  --enable-auto-tool-choice --tool-call-parser hermes\n```",
        ]
    elif fmt == "mlx":
        out += mlx_usage(repo, base_model)
    else:
        plan_cmd = (manifest.get("plan") or {}).get("command") or ""
        local = (
            f"\n# as planned for this hardware:\n{plan_cmd}" if plan_cmd.startswith("vllm") else ""
        )
        out += [
            "### vLLM",
            f"```bash\nvllm serve {repo} --enable-auto-tool-choice --tool-call-parser hermes"
            f"{local}\n```",
            "### llama.cpp and Ollama",
            "They take GGUF files: make one with `quantkit convert "
            f"{base_model or 'SOURCE'} --format gguf --quant Q4_K_M --out DIR`.",
        ]
    return "\n\n".join(out)


def mlx_usage(repo: str, base_model: str | None) -> list[str]:
    """mlx-lm's usage, as MLX Hub cards give it: Python with the chat template applied,
    the command line, and the OpenAI-compatible server (which applies the template too)."""
    return [
        "### mlx-lm (Apple silicon)",
        "```bash\npip install mlx-lm\n```",
        "```python\nfrom mlx_lm import load, generate\n\n"
        f'model, tokenizer = load("{repo}")\n\n'
        'prompt = "What is the capital of France?"\n'
        "if tokenizer.chat_template is not None:\n"
        '    messages = [{"role": "user", "content": prompt}]\n'
        "    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)\n\n"
        "response = generate(model, tokenizer, prompt=prompt, verbose=True)\n```",
        "`apply_chat_template` uses the chat template stored with the model; pass "
        '`chat_template="tool_use"` and `tools=[...]` for tool calls.',
        f'```bash\nmlx_lm.generate --model {repo} --prompt "What is the capital of France?"\n'
        f"mlx_lm.chat --model {repo}\n"
        f"# an OpenAI-compatible server; it applies the chat template to /v1/chat/completions\n"
        f"mlx_lm.server --model {repo} --port 8080\n```",
        "### Other runtimes",
        "MLX weights run on mlx only. For llama.cpp and Ollama make a GGUF with "
        f"`quantkit convert {base_model or 'SOURCE'} --format gguf --quant Q4_K_M --out DIR`; "
        "for vLLM, a safetensors folder (`--format safetensors`, `fp8` or `gptq`).",
    ]


def _server_reasoning(manifest: dict[str, Any]) -> list[str]:
    """What the reasoning round trip through llama-server found, in the user's words."""
    check = next((c for c in manifest.get("checks", []) if c.get("name") == _REASONING_CHECK), None)
    if check is None or check.get("skipped") or not check.get("passed"):
        return []
    if LLAMA_SERVER_REASONING_PARSED in check.get("evidence", ""):
        return [
            "llama-server returns the thought in `reasoning_content` (`--reasoning-format "
            "deepseek`, its default; checked when this was made)."
        ]
    return [LLAMA_SERVER_NO_REASONING + " (Checked in llama-server when this was made.)"]
