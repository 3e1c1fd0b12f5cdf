"""Sandboxed chat-template rendering (HF apply_chat_template semantics)."""

from __future__ import annotations

import json
import re

import pytest

from mistralrs.engine.tokenizer import (
    DEFAULT_CHATML_TEMPLATE,
    ChatTemplateError,
    render_chat,
    tokenizer_from_gguf,
)
from mistralrs.engine.formats.gguf_parse import read_gguf_metadata
from mistralrs.engine.tokenizer.template_worker import compile_cache_info

from conftest import REFERENCE

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTION = "What is the capital of France?"


def _render(template: str, messages=None, **kw) -> str:
    if messages is None:
        messages = [{"role": "user", "content": "hi"}]
    kw.setdefault("bos_token", "<s>")
    kw.setdefault("eos_token", "</s>")
    return render_chat(template, messages, **kw)


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_gguf) -> dict:
    return read_gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_prompt() -> dict:
    oracle = json.loads((REFERENCE / "smollm2-135m-instruct-q4_1.llamacpp.json").read_text())
    return oracle["prompts"][1]


# ----------------------------------------------------------------------------- real template
def test_smollm2_template_renders_oracle_prompt(smollm2_meta, smollm2_prompt):
    template = smollm2_meta["tokenizer.chat_template"]
    # the template injects its default system prompt when there is none ...
    user_only = render_chat(
        template, [{"role": "user", "content": QUESTION}], bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    assert user_only == smollm2_prompt["text"]
    # ... and an explicit, identical system message gives the very same text
    with_system = render_chat(
        template,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    assert with_system == smollm2_prompt["text"]
    # and tokenizes (special tokens parsed) to llama.cpp's prompt ids
    tok = tokenizer_from_gguf(smollm2_meta)
    assert tok.chat_template == template
    assert tok.encode(with_system, parse_special=True) == smollm2_prompt["ids"]
    no_gen = render_chat(
        template, [{"role": "user", "content": QUESTION}], add_generation_prompt=False, bos_token=None, eos_token=None
    )
    assert no_gen + "<|im_start|>assistant\n" == smollm2_prompt["text"]


def test_default_chatml_template():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    out = render_chat(DEFAULT_CHATML_TEMPLATE, messages, bos_token=None, eos_token=None)
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    out = render_chat(DEFAULT_CHATML_TEMPLATE, messages, add_generation_prompt=False, bos_token=None, eos_token=None)
    assert out.endswith("U<|im_end|>\n")


# ----------------------------------------------------------------------------- environment
def test_trim_and_lstrip_blocks():
    template = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert _render(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\nb\n"


def test_tojson_does_not_escape_html():
    out = _render("{{ messages[0] | tojson }}", [{"role": "user", "content": "<a href='x'>&é</a>"}])
    assert json.loads(out) == {"role": "user", "content": "<a href='x'>&é</a>"}
    assert "<a href=" in out and "é" in out
    assert _render("{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2, sort_keys=true) }}") == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'


def test_globals_and_extra_variables():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", _render("{{ strftime_now('%Y-%m-%d') }}"))
    assert _render("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}") == "<s>|</s>|True"
    assert _render("{{ enable_thinking }}", enable_thinking=False) == "False"
    assert _render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}") == "1"
    assert _render("{{ dict(a=1)['a'] }}") == "1"
    assert _render("{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}x{% endfor %}") == ""
    assert _render("{% generation %}body{% endgeneration %}") == "body"
    # tool calls: assistant content may be None
    msgs = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}]
    assert _render("{{ messages[0].tool_calls[0].name }}", msgs) == "f"


def test_content_parts_are_joined():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert _render("{{ messages[0].content }}", msgs) == "a\nb"


def test_messages_not_mutated():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]
    _render("{{ messages[0].content }}", msgs)
    assert msgs == [{"role": "user", "content": [{"type": "text", "text": "a"}]}]


def test_compiled_once():
    template = "{{ messages | length }} cached"
    _render(template)
    before = compile_cache_info()[0]  # templates compile in the renderer processes, and are cached there
    for _ in range(3):
        assert _render(template) == "1 cached"
    assert compile_cache_info()[0] >= before + 3


# ----------------------------------------------------------------------------- errors
def test_raise_exception():
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversation must start with system') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="Conversation must start with system"):
        _render(template)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ raise_exception.__globals__ }}",
        "{% set x = messages.append({'role': 'x'}) %}",
        "{% set ns = namespace(_secret=1) %}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
        "{% for i in range(1000000000) %}{% endfor %}",
    ],
)
def test_sandbox_blocks_unsafe_templates(template):
    with pytest.raises(ChatTemplateError) as info:
        _render(template)
    assert info.value.__cause__ is None  # a clean error, no chained traceback


def test_syntax_and_runtime_errors():
    with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
        _render("ok\n{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="failed"):
        _render("{{ messages[0].content.nope() }}")
    with pytest.raises(ChatTemplateError, match="failed"):
        _render("{{ 1 // 0 }}")
    with pytest.raises(ChatTemplateError, match="non-empty string"):
        _render("")


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ("hello", "messages must be a list"),
        ([["user", "hi"]], r"messages\[0\] must be an object"),
        ([{"content": "hi"}], r"messages\[0\]\.role"),
        ([{"role": 3, "content": "hi"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": "a"}, {"role": "user"}], r"messages\[1\]\.content is missing"),
        ([{"role": "user", "content": 42}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": None}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], r"messages\[0\]\.content\[0\]\.type"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], r"messages\[0\]\.content\[0\]\.text"),
    ],
)
def test_bad_messages_rejected(messages, field):
    with pytest.raises(ChatTemplateError, match=field):
        render_chat(DEFAULT_CHATML_TEMPLATE, messages, bos_token=None, eos_token=None)
    assert issubclass(ChatTemplateError, ValueError)
