"""Tool calling through the OpenAI endpoint with the official client, on the real SmolLM2 and Gemma 3
(both templates take no tools: the generic format) at temperature 0.8 and varied seeds: required and
named choices always give schema-valid calls, streamed deltas reassemble into the non-streamed calls,
a two-turn conversation renders the tool result into the prompt, and bad requests are 400s."""

from __future__ import annotations

import json
import signal

import httpx
import jsonschema
import openai
import pytest

from server_helpers import ServerProcess, real_model_args

pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                           "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def server(request, tmp_path_factory):
    proc = ServerProcess("sampling.max_tokens=160", *real_model_args(request), cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr


def _check_calls(calls, only: str | None = None) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id
        assert only in (None, call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _streamed(stream) -> tuple[str, list[tuple[str, str]], str]:
    """Content, (name, arguments) per call and the finish reason, rebuilt from the chunks."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            if d.id is not None:
                assert d.index not in calls and d.function.name
                calls[d.index] = [d.function.name, d.function.arguments or ""]
            else:
                calls[d.index][1] += d.function.arguments
        finish = choice.finish_reason or finish
    return content, [tuple(calls[i]) for i in sorted(calls)], finish


def test_required_and_named_choices_give_valid_calls(server):
    client = server.client()
    for seed in range(3):
        r = client.chat.completions.create(model=server.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, temperature=0.8, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
        _check_calls(choice.message.tool_calls)
        assert len(choice.message.tool_calls) == 1
        r = client.chat.completions.create(model=server.model, messages=ASK, tools=TOOLS, temperature=0.8, seed=seed,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
        assert r.choices[0].finish_reason == "tool_calls"
        _check_calls(r.choices[0].message.tool_calls, only="get_time")
        assert len(r.choices[0].message.tool_calls) == 1
    # parallel calls: a small model may go on calling until max_tokens; every complete call is valid,
    # and a cut one stays in the content with finish_reason "length"
    r = client.chat.completions.create(model=server.model, messages=ASK, tools=TOOLS, tool_choice="required", n=3,
                                       temperature=0.8, seed=11)
    for choice in r.choices:
        _check_calls(choice.message.tool_calls)
        # (cut between calls, the content is None: only a separator was left)
        cut = (choice.message.content or "<tool_call").strip()
        assert choice.finish_reason == "tool_calls" or (choice.finish_reason == "length" and cut.startswith("<tool_call"))


def test_streamed_calls_reassemble_into_the_non_streamed_ones(server):
    client = server.client()
    for seed in (3, 4):
        kwargs = dict(model=server.model, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0.8, seed=seed,
                      parallel_tool_calls=seed % 2 == 0, max_tokens=400)
        whole = client.chat.completions.create(**kwargs).choices[0]
        content, calls, finish = _streamed(client.chat.completions.create(stream=True, **kwargs))
        assert (content or None, finish) == (whole.message.content, whole.finish_reason)
        assert calls == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_auto_parses_a_call_in_the_output(server):
    # the model is made to write a call in the generic format; auto then parses it out of the text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    kwargs = dict(model=server.model, messages=ASK, tools=TOOLS, temperature=0.8, seed=5,
                  extra_body={"structured_outputs": {"choice": ["Let me look.\n" + call]}})
    message = server.client().chat.completions.create(**kwargs).choices[0].message
    assert message.content == "Let me look.\n"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})]
    content, calls, finish = _streamed(server.client().chat.completions.create(stream=True, **kwargs))
    assert (content, finish) == ("Let me look.\n", "tool_calls")
    assert calls == [("get_weather", message.tool_calls[0].function.arguments)]
    # and plain text stays plain text
    kwargs["extra_body"] = {"structured_outputs": {"choice": ["It is sunny."]}}
    r = server.client().chat.completions.create(**kwargs).choices[0]
    assert (r.message.content, r.message.tool_calls, r.finish_reason) == ("It is sunny.", None, "stop")


def test_tools_and_results_reach_the_prompt(server):
    client = server.client()
    plain = client.chat.completions.create(model=server.model, messages=ASK, max_tokens=1)
    first = client.chat.completions.create(model=server.model, messages=ASK, tools=TOOLS, tool_choice="required", seed=1,
                                           temperature=0.8)
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the tools' descriptions
    calls = first.choices[0].message.tool_calls
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"result": "sunny, 18 degrees"})}
        for c in calls]
    second = client.chat.completions.create(model=server.model, messages=history, tools=TOOLS, max_tokens=40)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10 * len(calls)
    tokenized = httpx.post(f"{server.url}/tokenize", json={"messages": history, "tools": TOOLS}).json()
    assert tokenized["count"] == second.usage.prompt_tokens
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokenized["tokens"]}).json()["prompt"]
    assert "sunny, 18 degrees" in text and '"name": "' + calls[0].function.name + '"' in text


@pytest.mark.parametrize("kwargs, param", [
    (dict(tools=[{"type": "code_interpreter"}]), "tools"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}]), "tools"),
    (dict(functions=[{"name": "f"}]), "functions"),
])
def test_bad_tool_requests_are_400s_naming_the_field(server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model=server.model, messages=ASK, max_tokens=4, **kwargs)
    assert info.value.body["param"] == param, info.value.body


def test_completions_refuse_tools(server):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().completions.create(model=server.model, prompt="x", max_tokens=2, extra_body={"tools": TOOLS})
    assert info.value.body["param"] == "tools"


def test_langchain_openai_works_unchanged(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        """A city and its country."""

        name: str = Field(max_length=24)
        country: str = Field(max_length=24)

    def get_weather(city: str) -> str:
        """The weather in a city."""
        raise AssertionError("only the model's call is checked")

    llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=server.model, temperature=0.8,
                     max_tokens=120, seed=2)
    assert isinstance(llm.with_structured_output(City).invoke("Name a city in France."), City)
    for choice in ("get_weather", "any"):
        message = llm.bind_tools([get_weather], tool_choice=choice).invoke("What is the weather in Paris?")
        assert message.tool_calls and all(c["name"] == "get_weather" and isinstance(c["args"]["city"], str)
                                          for c in message.tool_calls)
