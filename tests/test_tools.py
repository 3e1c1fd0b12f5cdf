"""Tool calling (engine/tools): request checks, each parser on recorded-style outputs (streamed in any
chunking), the grammar behind required/named choices (random sampling under it always yields valid
calls), and how tools and past calls reach the prompt on both paths."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mistralrs.engine.tokenizer import tokenizer_from_gguf, tokenizer_from_hf_dir
from mistralrs.engine.tokenizer.chat_template import ChatTemplateError, render_chat
from mistralrs.engine.tools import (TOOL_PARSERS, ContentDelta, ToolCallDelta, ToolRequestError, choose_tool_format,
                                    parse_tool_request)
from mistralrs.engine.tools.plan import marker_token_texts, plan_tools

from structured_helpers import sample_until_finished
from tiny_models import write_byte_tokenizer

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                             "unit": {"enum": ["c", "f"]}},
           "required": ["city"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}

# Qwen 2.5's template, cut to what tool calling needs
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    '<tool_call>\n{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
# Gemma 3's rules: a system message goes into the first user turn, then user and assistant turns only,
# alternating (it raises otherwise); no tools variable
ALTERNATING = (
    "{%- if messages[0].role == 'system' %}{%- set first = messages[0].content + '\n\n' %}"
    "{%- set turns = messages[1:] %}{%- else %}{%- set first = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "<{{ message.role }}>{{ first if loop.first else '' }}{{ message.content }}</{{ message.role }}>"
    "{%- endfor %}<assistant>"
)
TURN_ONE = [{"role": "user", "content": "Weather in Paris and the time in CET?"}]
TURN_TWO = TURN_ONE + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]


# ----------------------------------------------------------------------------- the request


def test_tool_request_defaults_and_choices():
    req = parse_tool_request(TOOLS)
    assert req.choice == "auto" and req.names == ("get_weather", "get_time") and req.parallel
    assert parse_tool_request(TOOLS, "none") is None and parse_tool_request(None) is None
    named = parse_tool_request(TOOLS, {"type": "function", "function": {"name": "get_time"}}, False)
    assert named.forced == "get_time" and [f.name for f in named.allowed()] == ["get_time"] and not named.parallel
    assert parse_tool_request(TOOLS, "required").calls_required


@pytest.mark.parametrize("tools, choice, parallel, param, message", [
    ([{"type": "retrieval"}], None, None, "tools", "type must be 'function'"),
    ([{"type": "function", "function": {"name": "a b"}}], None, None, "tools", "name must be"),
    ([TOOLS[0], TOOLS[0]], None, None, "tools", "two tools are named"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}], None, None,
     "tools", "not"),
    ({"type": "function"}, None, None, "tools", "must be a list"),
    (TOOLS, "always", None, "tool_choice", "must be one of"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, None, "tool_choice", "not among the tools"),
    (None, "required", None, "tool_choice", "needs tools"),
    (TOOLS, None, "yes", "parallel_tool_calls", "boolean"),
])
def test_bad_tool_requests_name_the_field(tools, choice, parallel, param, message):
    with pytest.raises(ToolRequestError, match=message) as info:
        parse_tool_request(tools, choice, parallel)
    assert info.value.param == param


# ----------------------------------------------------------------------------- parsers


def _parse(parser_name: str, text: str, step: int, forced: bool = False):
    parser = TOOL_PARSERS[parser_name](SCHEMAS, forced=forced)
    deltas = []
    for i in range(0, len(text), step):
        deltas += parser.feed(text[i:i + step])
    deltas += parser.finish()
    return parser, deltas


def _reassembled(deltas) -> tuple[str, list[tuple[str, str, str]]]:
    """Content and (id, name, arguments) per call, as an OpenAI client rebuilds them from deltas."""
    content, calls = "", []
    for d in deltas:
        if isinstance(d, ContentDelta):
            content += d.text
        elif d.id is not None:
            assert d.index == len(calls) and d.name
            calls.append([d.id, d.name, d.arguments])
        else:
            calls[d.index][2] += d.arguments
    return content, [tuple(c) for c in calls]


RECORDED = [  # (parser, model output, content, calls as (name, arguments object))
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "", [("get_weather", {"city": "Paris"})]),
    ("hermes", 'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}\n</tool_call>',
     "Checking both.\n", [("get_weather", {"city": "Rome", "unit": "c"}), ("get_time", {"zone": "CET"})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call> then text',
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call> then text', []),
    ("hermes", '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>', []),
    ("hermes", "x < y, and a <tool_ is not a call", "x < y, and a <tool_ is not a call", []),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}', "", [("get_time", {"zone": "UTC"})]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {"zone": "PST"}}; '
                    '{"name": "get_weather", "parameters": {"city": "LA"}}',
     "", [("get_time", {"zone": "PST"}), ("get_weather", {"city": "LA"})]),
    ("llama3_json", 'The set {1, 2} has two elements.', 'The set {1, 2} has two elements.', []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": ', '{"name": "get_weather", "parameters": {"city": ', []),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lyon"}}, '
                '{"name": "get_time", "arguments": {"zone": "CET"}}]',
     "", [("get_weather", {"city": "Lyon"}), ("get_time", {"zone": "CET"})]),
    ("mistral", 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Nice"}[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}',
     "Sure.", [("get_weather", {"city": "Nice"}), ("get_time", {"zone": "CET"})]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": [1]}]',
     '[TOOL_CALLS][{"name": "get_weather", "arguments": [1]}]', []),
]


@pytest.mark.parametrize("step", [1, 4, 1000])
@pytest.mark.parametrize("parser_name, text, content, calls", RECORDED)
def test_parsers_on_recorded_outputs(parser_name, text, content, calls, step):
    parser, deltas = _parse(parser_name, text, step)
    got_content, got_calls = _reassembled(deltas)
    assert got_content == content == parser.content
    assert [(name, json.loads(args)) for _, name, args in got_calls] == calls
    assert [c.id for c in parser.calls] == [c[0] for c in got_calls]
    assert len({c.id for c in parser.calls}) == len(calls)
    if parser_name == "mistral":  # its templates accept only 9-alphanumeric ids
        assert all(len(c.id) == 9 and c.id.isalnum() for c in parser.calls)


def test_streamed_call_gives_id_and_name_first():
    _, deltas = _parse("hermes", RECORDED[1][1], 3)
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0].id and calls[0].name == "get_weather" and calls[0].arguments == ""
    assert calls[1].id is None and json.loads(calls[1].arguments) == {"city": "Rome", "unit": "c"}
    # content before the call streams before it, and as soon as it cannot be the start of a call
    parser = TOOL_PARSERS["hermes"](SCHEMAS)
    assert parser.feed("Checking <") == [ContentDelta("Checking ")]
    assert parser.feed("b>") == [ContentDelta("<b>")]


# ----------------------------------------------------------------------------- formats and prompts


def test_format_is_chosen_from_the_template():
    assert choose_tool_format(QWEN_LIKE, True) == (TOOL_PARSERS["hermes"], True)
    assert choose_tool_format("{{ tools }}[TOOL_CALLS]", True) == (TOOL_PARSERS["mistral"], True)
    assert choose_tool_format("{{ tools }}<|python_tag|>", True) == (TOOL_PARSERS["llama3_json"], True)
    assert choose_tool_format(ALTERNATING, False) == (TOOL_PARSERS["hermes"], False)  # the generic format
    assert choose_tool_format("{{ tools }} in some format", True) == (TOOL_PARSERS["hermes"], False)
    assert choose_tool_format(ALTERNATING, False, "mistral") == (TOOL_PARSERS["mistral"], False)
    with pytest.raises(ValueError, match="not one of"):
        choose_tool_format(ALTERNATING, False, "xml")


def _render(template: str, messages, tools=TOOLS, choice=None) -> str:
    plan = plan_tools(template, tools, choice)
    msgs, extra = plan.render_inputs(messages)
    return render_chat(template, msgs, bos_token="", eos_token="", **extra)


def test_template_with_tools_renders_them_and_round_trips_calls():
    first = _render(QWEN_LIKE, TURN_ONE)
    for tool in TOOLS:
        assert json.dumps(tool) in first
    second = _render(QWEN_LIKE, TURN_TWO)
    # arguments reach the template as objects: rendered once-encoded, as the model wrote them
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in second
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in second and "14:05" in second
    assert "<tools>" not in _render(QWEN_LIKE, TURN_ONE, choice="none")


def test_generic_format_for_a_template_without_tools():
    first = _render(ALTERNATING, TURN_ONE)
    assert first.startswith("<user>You can call the functions below.")
    assert json.dumps(TOOLS[0]["function"]) in first and "<tool_call>" in first
    with pytest.raises(ChatTemplateError, match="alternate"):  # the raw conversation breaks this template
        render_chat(ALTERNATING, TURN_TWO, bos_token="", eos_token="")
    second = _render(ALTERNATING, [{"role": "system", "content": "Be brief."}] + TURN_TWO + [
        {"role": "assistant", "content": "Sunny, 18 C; it is 14:05."}, {"role": "user", "content": "Thanks"}],
        tools=TOOLS)
    assert second.startswith("<user>Be brief.\n\nYou can call the functions below.")
    assert ('<assistant><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call></assistant>') in second
    assert ("<user><tool_response>\n18 C, sunny\n</tool_response>\n<tool_response>\n14:05\n</tool_response></user>"
            in second)


def test_bad_past_calls_are_named():
    bad = TURN_TWO[:1] + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}]
    for template in (QWEN_LIKE, ALTERNATING):
        with pytest.raises(ToolRequestError, match=r"messages\[1\].tool_calls\[0\].function.arguments") as info:
            _render(template, bad)
        assert info.value.param == "messages"


# ----------------------------------------------------------------------------- forced calls


@pytest.fixture(scope="module")
def smol_tok(smollm2_gguf):
    return tokenizer_from_gguf(smollm2_gguf)


@pytest.mark.parametrize("parser_name", list(TOOL_PARSERS))
@pytest.mark.parametrize("choice, parallel", [("required", True), ("required", False),
                                              ({"type": "function", "function": {"name": "get_time"}}, True)])
def test_forced_calls_are_always_valid(smol_tok, parser_name, choice, parallel):
    plan = plan_tools(ALTERNATING, TOOLS, choice, parallel, parser=parser_name)
    counts = set()
    for seed in range(6):
        text = sample_until_finished(plan.grammar, smol_tok, seed)
        parser = plan.new_parser()
        parser.feed(text)
        parser.finish()
        assert parser.calls and parser.content == "", text
        for call in parser.calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        if isinstance(choice, dict):
            assert [c.name for c in parser.calls] == ["get_time"]
        counts.add(len(parser.calls))
    if not parallel:
        assert counts == {1}


def test_required_and_response_format_are_exclusive_and_auto_has_no_grammar():
    assert plan_tools(ALTERNATING, TOOLS, "auto").grammar is None
    assert plan_tools(ALTERNATING, TOOLS, "required").grammar.kind == "tool_choice"


def test_special_marker_tokens_reach_the_parser(tmp_path):
    from tokenizers import Tokenizer

    write_byte_tokenizer(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf.add_special_tokens(["[TOOL_CALLS]"])
    hf.add_tokens(["<tool_call>"])  # Qwen's: an added token that is not special, so it decodes as text
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = tokenizer_from_hf_dir(tmp_path)
    marker = tok.encode("[TOOL_CALLS]", add_special=False, parse_special=True)
    assert len(marker) == 1 and tok.decode(marker, skip_special=True) == ""
    assert marker_token_texts(tok, TOOL_PARSERS["mistral"]) == {marker[0]: "[TOOL_CALLS]"}
    assert marker_token_texts(tok, TOOL_PARSERS["hermes"]) == {}


# ----------------------------------------------------------------------------- from review


def test_required_grammar_keeps_each_schemas_own_refs(smol_tok):
    """A pydantic-style schema (#/$defs/...) stays a root inside the grammar of calls."""
    loc = {"type": "object", "properties": {"c": {"enum": ["x", "y"]}}, "required": ["c"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "where", "parameters": {
        "type": "object", "properties": {"loc": {"$ref": "#/$defs/Loc"}}, "required": ["loc"],
        "additionalProperties": False, "$defs": {"Loc": loc}}}}]
    plan = plan_tools(ALTERNATING, tools, "required", False)
    for seed in range(3):
        parser = plan.new_parser()
        parser.feed(sample_until_finished(plan.grammar, smol_tok, seed))
        parser.finish()
        (call,) = parser.calls
        jsonschema.validate(json.loads(call.arguments), tools[0]["function"]["parameters"])


def test_parameters_must_describe_an_object():
    with pytest.raises(ToolRequestError, match="must describe an object"):
        parse_tool_request([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    (f,) = parse_tool_request([{"type": "function", "function": {"name": "f", "parameters": {}}}]).functions
    assert f.parameters == {"type": "object"}


def test_closing_tag_inside_an_argument_and_deep_arguments():
    text = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "</tool_call>"}}\n</tool_call>'
    for step in (1, 5, 1000):
        parser, _ = _parse("hermes", text, step, forced=True)
        assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("get_time", {"zone": "</tool_call>"})]
    deep = '<tool_call>{"name": "get_time", "arguments": "' + "[" * 100_000 + '"}</tool_call>'
    parser, _ = _parse("hermes", deep, 1000)
    assert parser.calls == [] and parser.content == deep


@pytest.mark.parametrize("parser_name, text, content", [
    ("mistral", '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "CET"}}] Done.', " Done."),
    ("llama3_json", '{"name": "get_time", "parameters": {"zone": "CET"}} and that is all', " and that is all"),
])
def test_text_after_the_calls_is_content(parser_name, text, content):
    parser, _ = _parse(parser_name, text, 7)
    assert [c.name for c in parser.calls] == ["get_time"] and parser.content == content


def test_one_call_without_parallel_calls():
    two = ('<tool_call>{"name": "get_time", "arguments": {"zone": "A"}}</tool_call>'
           '<tool_call>{"name": "get_time", "arguments": {"zone": "B"}}</tool_call>')
    parser = TOOL_PARSERS["hermes"](SCHEMAS, parallel=False)
    parser.feed(two)
    parser.finish()
    assert len(parser.calls) == 1 and parser.content == two[two.index("</tool_call>") + len("</tool_call>"):]


def test_generic_format_keeps_content_parts_and_merges_a_user_turn_after_results():
    history = TURN_TWO[:1] + [dict(TURN_TWO[1], content=[{"type": "text", "text": "Let me check."}])] + TURN_TWO[2:] + [
        {"role": "user", "content": "And in Rome?"}]
    text = _render(ALTERNATING, history)
    assert "<assistant>Let me check.\n<tool_call>" in text
    assert "14:05\n</tool_response>\nAnd in Rome?</user>" in text
    with pytest.raises(ToolRequestError, match=r"messages\[2\].content is missing"):
        _render(ALTERNATING, TURN_TWO[:2] + [{"role": "tool", "tool_call_id": "call_1"}])
