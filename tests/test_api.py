"""The Python API as the README shows it, on a tiny model."""

from __future__ import annotations

import pytest
import torch

import mistralrs

pytest.importorskip("transformers")

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from tiny_models import make_tiny_llama, write_byte_tokenizer

    path = tmp_path_factory.mktemp("api") / "m"
    make_tiny_llama(path)
    write_byte_tokenizer(path, chat_template=TEMPLATE)
    return mistralrs.load("model=llama", f"model.source={path}", "model.dtype=float32", "model.device=cpu")


def test_generate_text_stream_and_batch_agree(llm):
    text = llm.generate("hello", max_tokens=6, temperature=0, ignore_eos=True)
    assert isinstance(text, str)
    assert "".join(llm.generate("hello", stream=True, max_tokens=6, temperature=0, ignore_eos=True)) == text
    batch = llm.generate(["hello", "other prompt"], max_tokens=6, temperature=0, ignore_eos=True)
    assert batch[0] == text and len(batch) == 2


def test_generated_text_is_the_decoded_tokens(llm):
    ids = llm.tokenizer.encode("abc")
    events = [e for _, e in llm.run([ids], max_tokens=10, temperature=0, ignore_eos=True)]
    assert "".join(e.text for e in events) == llm.tokenizer.decode([e.token for e in events], skip_special=True)
    assert events[-1].finish_reason == "length" and len(events) == 10


def test_seeded_sampling_is_reproducible(llm):
    a = llm.generate("seed", max_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    b = llm.generate("seed", max_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    assert a == b


def test_chat_uses_the_template(llm):
    ids = llm.chat_prompt_ids([{"role": "user", "content": "hi"}])
    assert llm.tokenizer.decode(ids, skip_special=False).startswith("<s><user>hi</s><assistant>")
    reply = llm.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    assert isinstance(reply, str)


def test_logits_shape_and_consistency_with_generation(llm):
    ids = llm.tokenizer.encode("The sky is")
    logits = llm.logits(ids)
    assert logits.shape == (len(ids), llm.loaded.config.vocab_size) and logits.dtype == torch.float32
    first = [e for _, e in llm.run([ids], max_tokens=1, temperature=0)]
    assert first[0].token == int(logits[-1].argmax())


def test_bad_sampling_argument_is_rejected(llm):
    with pytest.raises(TypeError, match="temprature"):
        llm.generate("x", temprature=0.5)
    with pytest.raises(ValueError, match="top_p"):
        llm.generate("x", top_p=0)


def test_stop_strings_cut_the_text(llm):
    full = llm.generate("hello", max_tokens=12, temperature=0, ignore_eos=True)
    stop = full[3:5]
    if not stop.strip():
        pytest.skip("random model produced whitespace; nothing to stop on")
    cut = llm.generate("hello", max_tokens=12, temperature=0, ignore_eos=True, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_prompt_longer_than_context_is_an_error(llm):
    ids = [5] * (llm.loaded.max_seq_len + 1)
    with pytest.raises(ValueError, match="context"):
        llm.logits(ids)


def test_chat_with_tools_returns_openai_style_calls(tmp_path):
    import json

    from mistralrs.engine.tools import ContentDelta, ToolCallDelta, ToolRequestError

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "pick", "parameters": schema}}]
    chat = [{"role": "user", "content": "pick"}]
    # a template that takes tools in the hermes format, short enough for the tiny model's context
    from tiny_models import make_tiny_llama, write_byte_tokenizer

    make_tiny_llama(tmp_path)
    write_byte_tokenizer(tmp_path, chat_template="{% if tools %}<tool_call>{{ tools | length }}{% endif %}" + TEMPLATE)
    llm = mistralrs.load("model=llama", f"model.source={tmp_path}", "model.dtype=float32", "model.device=cpu")
    assert llm.tool_plan(tools).via_template
    message = llm.chat(chat, tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                       temperature=0.9, seed=3)
    assert message["role"] == "assistant" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "pick" and 0 <= json.loads(call["function"]["arguments"])["n"] <= 9
    deltas = list(llm.chat(chat, tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                           temperature=0.9, seed=3, stream=True))
    assert all(isinstance(d, (ContentDelta, ToolCallDelta)) for d in deltas)
    assert [d.arguments for d in deltas if d.id is None] == [call["function"]["arguments"]]
    # the random tiny model says no call by itself: auto gives plain content
    free = llm.chat(chat, tools=tools, max_tokens=5, temperature=0, ignore_eos=True)
    assert free["content"] and "tool_calls" not in free
    with pytest.raises(ToolRequestError, match="tool_choice"):
        llm.chat(chat, tools=tools, tool_choice={"type": "function", "function": {"name": "other"}})
