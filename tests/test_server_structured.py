"""Structured outputs through the OpenAI endpoint, with the official client, on the real SmolLM2 and Gemma 3 at
temperature 0.8 and varied seeds: every constrained answer validates, whatever the model would have
said freely; unsupported schema keywords are 400s naming them."""

from __future__ import annotations

import json
import re
import signal

import pytest

from server_helpers import ServerProcess, real_model_args

jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def server(request, tmp_path_factory):
    proc = ServerProcess("sampling.max_tokens=120", *real_model_args(request), cwd=tmp_path_factory.mktemp("cwd"))
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.stderr


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_json_schema_answers_validate(server):
    client = server.client()
    for seed in range(4):
        r = client.chat.completions.create(model=server.model, messages=ASK, temperature=0.8, seed=seed,
                                           response_format=_schema_format(PERSON))
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_streamed_and_n2_answers_validate(server):
    client = server.client()
    stream = client.chat.completions.create(model=server.model, messages=ASK, temperature=0.8, seed=7, stream=True,
                                            response_format=_schema_format(PERSON))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    r = client.chat.completions.create(model=server.model, messages=ASK, temperature=0.8, seed=8, n=2, logprobs=True,
                                       response_format=_schema_format(PERSON))
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON)
        # logprobs come from the masked distribution: every reported token was allowed, so finite
        assert all(t.logprob > float("-inf") for t in choice.logprobs.content)
    r = client.completions.create(model=server.model, prompt="Is the sky green? Answer:", temperature=0.8, seed=2,
                                  logprobs=5, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    # masked tokens are not alternatives: every top logprob is a real number, for a token that starts
    # one of the choices
    tops = r.choices[0].logprobs.top_logprobs
    assert all(isinstance(v, float) for top in tops for v in top.values())
    assert tops[0] and all("yes".startswith(t) or "no".startswith(t) for t in tops[0]), tops[0]


def test_parse_returns_the_pydantic_object(server):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        population: int
        coastal: bool

    r = server.client().chat.completions.parse(model=server.model, temperature=0.8, seed=3, response_format=City,
                                               messages=[{"role": "user", "content": "Name a city."}])
    assert isinstance(r.choices[0].message.parsed, City)


def test_json_object_choice_regex_and_lark(server):
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=ASK, temperature=0.8, seed=1,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    for seed in range(3):
        choice = client.completions.create(model=server.model, prompt="Is the sky green? Answer:", temperature=0.8,
                                           seed=seed, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
        assert choice.choices[0].text in ("yes", "no")
        regex = client.completions.create(model=server.model, prompt="A date:", temperature=0.8, seed=seed,
                                          extra_body={"structured_outputs": {"regex": r"20\d\d-[01]\d-[0-3]\d"}})
        assert re.fullmatch(r"20\d\d-[01]\d-[0-3]\d", regex.choices[0].text)
        lark = client.completions.create(model=server.model, prompt="Some arithmetic:", temperature=0.8, seed=seed,
                                         extra_body={"structured_outputs": {"grammar": 'start: NUM " + " NUM\nNUM: /[0-9]{1,3}/'}})
        assert re.fullmatch(r"[0-9]{1,3} \+ [0-9]{1,3}", lark.choices[0].text)


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": _schema_format({"type": "array", "uniqueItems": True})}, "response_format", "uniqueItems"),
    ({"response_format": _schema_format({"type": "object", "nullable": True})}, "response_format", "nullable"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"grammar": "start: ("}}, "structured_outputs", "grammar"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs", "not both"),
    ({"structured_outputs": {"regex": "a\\"}}, "structured_outputs", "backslash"),
    ({"response_format": _schema_format({"type": "string", "pattern": "^(a{1000}){1000}$"})}, "response_format",
     "too complex"),
])
def test_unsupported_structured_requests_are_400s_naming_why(server, body, param, words):
    import httpx

    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": ASK, **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
