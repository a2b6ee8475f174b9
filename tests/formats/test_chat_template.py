"""quantkit.formats.chat_template: renders exactly as transformers' apply_chat_template does, finds
the turn-end token, and refuses templates that try to leave the Jinja sandbox."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from quantkit.errors import QuantkitError
from quantkit.formats.chat_template import TemplateError, render, turn_end_token
from quantkit.source.tokenizer_bundle import load_tokenizer_bundle

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city <b>now</b> & later — in °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "e.g. Zürich, 東京"}},
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {"name": "search", "description": "Search the web",
                 "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}  # fmt: skip


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]] = {
    "user-only": ([{"role": "user", "content": "Hello!"}], None, True),
    "system-multi-turn": (
        [
            {"role": "system", "content": "You are Hermes, a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nSimple.\n</think>\n4"},
            {"role": "user", "content": "And 3+3?\n\nExplain  briefly."},
        ],
        None,
        True,
    ),
    "ends-with-assistant": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
        None,
        False,
    ),
    "unicode": (
        [
            {"role": "system", "content": "Réponds en français 🇫🇷"},
            {"role": "user", "content": "中文？ 😀👨‍👩‍👧 עברית \"quotes\" 'single' \\backslash\t"},
            {"role": "assistant", "content": "D'accord — « oui » ✅"},
        ],
        None,
        True,
    ),
    "tools-and-calls": (
        [
            {"role": "system", "content": "Use tools when needed."},
            {"role": "user", "content": "Weather in Zürich and Tokyo?"},
            {"role": "assistant", "content": "",
             "tool_calls": [_call("get_weather", {"city": "Zürich"}),
                            _call("get_weather", {"city": "東京"})]},
            {"role": "tool", "content": '{"temp": 21, "unit": "°C"}'},
            {"role": "tool", "content": '{"temp": 28}'},
            {"role": "assistant", "content": "Zürich 21 °C, Tokyo 28 °C."},
        ],
        [WEATHER_TOOL, SEARCH_TOOL],
        True,
    ),
    "call-with-content-and-string-args": (
        [
            {"role": "user", "content": "Search for llamas"},
            {"role": "assistant", "content": "Let me search.",
             "tool_calls": [_call("search", '{"q": "llamas"}')]},
            {"role": "tool", "content": "Llamas are camelids."},
        ],
        [SEARCH_TOOL],
        True,
    ),
    "tools-no-calls": ([{"role": "user", "content": "Just chat"}], [WEATHER_TOOL], True),
}  # fmt: skip


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    return dict(tokenizer.special_tokens_map)


@pytest.fixture(scope="module")
def tokenizers(demo_model: Path, llama31_model: Path, qwen3_model: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    folders = {"demo": demo_model, "llama31": llama31_model, "qwen3": qwen3_model}
    return {
        name: (AutoTokenizer.from_pretrained(folder), load_tokenizer_bundle(folder))
        for name, folder in folders.items()
    }


@pytest.mark.parametrize("template_name", ["default", "tool_use"])
@pytest.mark.parametrize("model", ["demo", "llama31", "qwen3"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_render_equals_transformers(
    tokenizers: dict[str, Any], model: str, template_name: str, conversation: str
) -> None:
    tokenizer, bundle = tokenizers[model]
    messages, tools, add_generation_prompt = CONVERSATIONS[conversation]
    expected = tokenizer.apply_chat_template(
        copy.deepcopy(messages),
        tools=copy.deepcopy(tools),
        chat_template=template_name,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    got = render(
        bundle.chat_templates[template_name],
        copy.deepcopy(messages),
        tools=copy.deepcopy(tools),
        add_generation_prompt=add_generation_prompt,
        **_special_tokens(tokenizer),
    )
    assert got == expected
    for message in messages:  # the content really is in there, unchanged
        if isinstance(message.get("content"), str) and message["content"]:
            assert message["content"] in got


def test_render_tool_use_shows_hermes_tags_and_unescaped_json(
    tokenizers: dict[str, Any],
) -> None:
    tokenizer, bundle = tokenizers["demo"]
    messages, tools, _ = CONVERSATIONS["tools-and-calls"]
    text = render(bundle.chat_templates["tool_use"], messages, tools=tools,
                  **_special_tokens(tokenizer))  # fmt: skip
    assert "<tools>" in text and "</tools>" in text
    assert text.count("<tool_call>\n") == 3  # two calls + the format example
    assert '{"name": "get_weather", "arguments": {"city": "Zürich"}}' in text
    assert text.count("<tool_response>") == 2
    assert json.dumps(WEATHER_TOOL, ensure_ascii=False) in text  # no \u escapes, no &lt;


def test_render_passes_extra_variables_and_globals() -> None:
    template = "{{ bos_token }}{{ custom }}|{{ strftime_now('%Y') }}|{{ 'ü<' | tojson }}"
    year = str(datetime.datetime.now().year)
    assert render(template, [], bos_token="<s>", custom=42) == f'<s>42|{year}|"ü<"'


@pytest.mark.parametrize(
    "template",
    ["{%- for m in messages %}{{ m.role }}:{{ m.content }}\n{%- endfor %}",
     "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}\n",
     "{% if add_generation_prompt %}  GEN{% endif %}{{ messages | length }}"],
    ids=["dash-trim", "trim-blocks", "lstrip-blocks"],
)  # fmt: skip
def test_whitespace_handling_equals_transformers(template: str) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    expected, _ = render_jinja_template([messages], chat_template=template,
                                        add_generation_prompt=True)  # fmt: skip
    assert render(template, messages, add_generation_prompt=True) == expected[0]


def test_render_defines_documents_like_transformers() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    template = "{% if documents is none %}no documents{% else %}documents{% endif %}"
    messages = [{"role": "user", "content": "a"}]
    expected, _ = render_jinja_template([messages], chat_template=template)
    assert expected[0] == "no documents"
    assert render(template, messages) == expected[0]


# --- turn_end_token -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "turn_end"), [("demo", "<|im_end|>"), ("llama31", "<|eot_id|>"),
                            ("qwen3", "<|im_end|>")],
)  # fmt: skip
@pytest.mark.parametrize("template_name", ["default", "tool_use"])
def test_turn_end_token_of_fixture_templates(
    tokenizers: dict[str, Any], model: str, turn_end: str, template_name: str
) -> None:
    tokenizer, bundle = tokenizers[model]
    specials = [t.content for t in bundle.added_tokens if t.special]
    template = bundle.chat_templates[template_name]
    assert turn_end_token(template, specials, **_special_tokens(tokenizer)) == turn_end


def test_turn_end_token_prefers_the_longest_match_after_whitespace() -> None:
    template = "{% for m in messages %}{{ m.content }}  \n<|end_of_turn|>{% endfor %}"
    specials = ["<|end", "<|end_of_turn|>", "<|im_end|>"]
    assert turn_end_token(template, specials) == "<|end_of_turn|>"


def test_turn_end_token_is_none_when_nothing_follows_the_reply() -> None:
    assert turn_end_token("{% for m in messages %}{{ m.content }}{% endfor %}", ["<|x|>"]) is None
    # a template that drops assistant replies entirely
    dropping = "{% for m in messages if m.role == 'user' %}{{ m.content }}<|x|>{% endfor %}"
    assert turn_end_token(dropping, ["<|x|>"]) is None


def test_turn_end_token_ignores_non_special_text() -> None:
    template = "{% for m in messages %}{{ m.content }}</s>{% endfor %}"
    assert turn_end_token(template, ["<|im_end|>"]) is None
    assert turn_end_token(template, ["</s>"]) == "</s>"


# --- the sandbox --------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ joiner.__init__.__globals__['os'].popen('touch CANARY').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('touch CANARY') }}",
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('CANARY', 'w') }}",
    "{% set _ = messages.append({'role': 'x'}) %}",
    "{% set d = {} %}{{ d.update({'a': 1}) }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escape_raises_template_error(
    template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    canary = tmp_path / "CANARY"
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError) as info:
        render(template, messages)
    assert isinstance(info.value, QuantkitError)
    assert not canary.exists()
    assert messages == [{"role": "user", "content": "hi"}]  # not mutated
    assert "sandbox" in str(info.value) or "failed to render" in str(info.value)


@pytest.mark.parametrize(
    "template", ["{{ messages.__class__ }}", "{{ ''|attr('__class__') }}",
                 "{{ self._TemplateReference__context }}"],
)  # fmt: skip
def test_unsafe_attribute_lookups_render_as_undefined(template: str) -> None:
    # As in transformers: the sandbox turns unsafe attribute lookups into undefined values
    # (rendered empty) rather than errors; nothing of Python's internals comes out.
    assert render(template, []) == ""


def test_template_errors_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        render("{{ raise_exception('Conversation roles must alternate') }}", [])
    with pytest.raises(TemplateError, match="failed to render"):
        render("{% for m in messages %}", [])  # syntax error
    with pytest.raises(TemplateError, match="undefined"):
        render("{{ nothing.here }}", [])


@pytest.mark.parametrize("template", ["{{ 'a' + 1 }}", "{{ 1 / 0 }}"])
def test_python_errors_while_rendering_are_template_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, [])


# --- render limits: time and size (quantkit.formats.template_limits) ---------------------

# Renders in a fresh interpreter with 1 GiB of address space: on code without the limits a
# looping template makes subprocess.run time out and a huge one fails to allocate, so the
# test fails instead of hanging pytest or exhausting the machine.
_RENDER_APART = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
from quantkit.formats.chat_template import TemplateError, render
out = []
for template in json.loads(sys.argv[1]):
    if template.startswith("#sleep "):
        time.sleep(float(template.split()[1]))
        continue
    start = time.monotonic()
    try:
        render(template, [{"role": "user", "content": "hi"}])
        result = "rendered"
    except TemplateError as exc:
        result = str(exc)
    except BaseException as exc:  # what the old code raised: the test fails on it
        result = repr(exc)
    out.append([result, time.monotonic() - start])
print(json.dumps(out))
"""


def _render_apart(*templates: str, timeout: float = 90) -> list[tuple[str, float]]:
    """(TemplateError message or "rendered", seconds) for each template, in order."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _RENDER_APART, json.dumps(templates)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(item) for item in json.loads(proc.stdout)]


NESTED_LOOPS = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
FAN_OUT_MACRO = (
    "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}"
)


@pytest.mark.slow
def test_a_looping_template_stops_within_the_time_limit() -> None:
    from quantkit.formats.template_limits import RENDER_SECONDS

    results = _render_apart(
        NESTED_LOOPS, FAN_OUT_MACRO, NESTED_LOOPS, "#sleep 2.5", "{{ messages[0].content }}"
    )
    reason = f"did not finish rendering within {RENDER_SECONDS:g} s"
    (loops, loops_s), (macro, macro_s), (again, again_s), (normal, _) = results
    assert reason in loops and reason in macro and reason in again
    assert RENDER_SECONDS <= loops_s < RENDER_SECONDS + 5
    assert RENDER_SECONDS <= macro_s < RENDER_SECONDS + 5
    assert again_s < 0.5  # a template that overran once is refused at once
    # The watchdog leaves nothing behind: a later render, past its re-raise interval, works.
    assert normal == "rendered"


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 'x' * 1000000000 }}",  # a constant: must not be folded when compiling
        "{{ ['x'] * 10**9 }}",
        "{{ 10**(10**10) }}",
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}",
        "{{ 'x'.ljust(10**10) }}",
        "{{ 'x'|center(10**10) }}",
        "{{ '%9999999999d' % 1 }}",
        "{{ '{:>9999999999}'.format(1) }}",
        "{{ messages|tojson(indent=10**10) }}",
        "{{ ('x' * 100000)|replace('', 'y' * 100000) }}",
        "{% for i in range(99999) %}{% for j in range(99999) %}0123456789{% endfor %}{% endfor %}",
    ],
)  # fmt: skip
def test_a_huge_value_is_refused_before_it_is_built(template: str) -> None:
    ((message, seconds),) = _render_apart(template)
    assert "rendered more than 4 MB" in message or "computed a number of more than" in message
    assert seconds < 2


def test_templates_inside_the_limits_render_as_before() -> None:
    text = render(
        "{{ 'ab' * 1000 }}{{ 2**64 }}{{ '%05d' % 42 }}{{ '{:>6}'.format('x') }}"
        "{{ 'x'|center(9) }}{{ ['a', 'b']|join(', ') }}{{ 'a' ~ 1 }}{{ 1700000000|tojson }}",
        [],
    )
    assert text == ("ab" * 1000 + str(2**64) + "00042" + "     x" + "    x    " + "a, b"
                    + "a1" + "1700000000")  # fmt: skip


def test_macro_recursion_without_end_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="recursion"):
        render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", [])


def test_another_renderer_runs_within_the_limits() -> None:
    """foreign_render (transformers, llama-cpp-python): a template over the limits in
    quantkit's renderer never reaches the other one; the other one is timed too."""
    import time

    from quantkit.formats.chat_template import TemplateLimitError, foreign_render
    from quantkit.formats.template_limits import RENDER_SECONDS

    def never() -> str:
        raise AssertionError("handed to the other renderer")

    with pytest.raises(TemplateLimitError, match="rendered more than 4 MB"):
        foreign_render("{{ 'x' * 10**9 }}", never, [])

    def spin() -> str:
        while True:
            pass

    start = time.monotonic()
    with pytest.raises(TemplateLimitError, match="did not finish rendering within"):
        foreign_render("{{ 'spins elsewhere' }}", spin, [])
    assert time.monotonic() - start < RENDER_SECONDS + 5
    assert foreign_render("{{ 'ok' }}", lambda: "theirs", []) == "theirs"
