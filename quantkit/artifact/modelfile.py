"""The Ollama Modelfile of a GGUF artifact: FROM, the chat template as a Go template, and
the stop token.

Ollama does not run Jinja. quantkit recognises the two turn formats Hermes models use
(ChatML and Llama-3) from the markers the template writes and writes the Go-template
equivalent, with Hermes tool calling; any other format gets a Modelfile without TEMPLATE
and a note saying so.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

# Go-template versions of the two turn formats, with Hermes tool calling: tools listed in
# the system turn inside <tools></tools>, calls as <tool_call> JSON, results as
# <tool_response> in a "tool" turn. Ollama passes the system prompt as .System and the
# conversation as .Messages.
_TOOLS_BLOCK = (
    "You can call functions. Their signatures are inside <tools></tools>:\n<tools>"
    "{{ range .Tools }}\n{{ . }}{{ end }}\n</tools>\n"
    "To call one, answer with a JSON object inside <tool_call></tool_call> tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</tool_call>'
)
_CALLS = (
    "{{ range .ToolCalls }}\n<tool_call>\n"
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n'
    "</tool_call>{{ end }}"
)
_TURN_FORMATS = {
    # (turn start, turn end): ROLE stands for the role
    "chatml": ("<|im_start|>ROLE\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>ROLE<|end_header_id|>\n\n", "<|eot_id|>"),
}


def template_format(template: str | None) -> str | None:
    """ "chatml" or "llama3" from the turn markers a template writes, else None."""
    if not template:
        return None
    text = template
    try:
        from ..formats.chat_template import render

        text = render(
            template,
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
            ],
            add_generation_prompt=False,
            bos_token="",
            eos_token="",
        )
    except Exception:  # noqa: BLE001 - fall back to the template's text
        log.debug("template did not render; recognising it by its text", exc_info=True)
    if "<|im_start|>" in text and "<|im_end|>" in text:
        return "chatml"
    if "<|start_header_id|>" in text and "<|eot_id|>" in text:
        return "llama3"
    return None


def go_template(kind: str) -> str:
    """The turn format as an Ollama (Go) template. No `{{-` trimming: every newline in
    the text is one the model sees."""
    start, end = _TURN_FORMATS[kind]

    def head(role: str) -> str:
        return start.replace("ROLE", role)

    return (
        "{{ if or .System .Tools }}"
        + head("system")
        + "{{ if .System }}{{ .System }}{{ if .Tools }}\n\n{{ end }}{{ end }}"
        + "{{ if .Tools }}"
        + _TOOLS_BLOCK
        + "{{ end }}"
        + end
        + "{{ end }}"
        + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + '{{ if eq .Role "assistant" }}'
        + head("assistant")
        + "{{ .Content }}"
        + _CALLS
        + "{{ if not $last }}"
        + end
        + "{{ end }}"
        + '{{ else if eq .Role "tool" }}'
        + head("tool")
        + "<tool_response>\n{{ .Content }}\n</tool_response>"
        + end
        + '{{ else if eq .Role "user" }}'
        + head("user")
        + "{{ .Content }}"
        + end
        + "{{ end }}"
        + '{{ if and $last (ne .Role "assistant") }}'
        + head("assistant")
        + "{{ end }}"
        + "{{ end }}"
    )


def render_modelfile(
    gguf_names: list[str], template: str | None, turn_end: str | None
) -> tuple[str, str | None]:
    """(Modelfile text, a note for the user or None)."""
    first = gguf_names[0] if gguf_names else "model.gguf"
    lines = ["# Written by quantkit. Use it with: ollama create NAME -f Modelfile"]
    note = None
    if len(gguf_names) > 1:
        note = "Ollama does not load split GGUFs: merge the shards and change FROM"
        lines.append(f"# {note}.")
    lines.append(f"FROM ./{first}")
    kind = template_format(template)
    if kind is None:
        note = note or (
            "the chat template's turn format is neither ChatML nor Llama-3: the Modelfile "
            "has no TEMPLATE (Ollama uses the GGUF's template as far as it understands it)"
        )
        lines.append("# No TEMPLATE: the chat template's turn format was not recognised.")
    else:
        lines.append(f'TEMPLATE """{go_template(kind)}"""')
    stop = turn_end or (_TURN_FORMATS[kind][1].strip() if kind else None)
    if stop:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n", note
