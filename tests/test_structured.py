"""Constrained decoding (engine/structured): grammars compile or fail by name, and sampling under the
masks always yields output that parses as asked, on a byte-level tokenizer and on SmolLM2's 49k one."""

from __future__ import annotations

import json
import re
import statistics
import time

import jsonschema
import pytest
import torch

from mistralrs.engine.structured import (
    MAX_CHOICES,
    MAX_GRAMMAR_CHARS,
    MAX_SCHEMA_DEPTH,
    BatchMasker,
    GrammarError,
    GrammarState,
    TokenNotAllowed,
    apply_token_bitmask,
    bitmask_words,
    compile_choice,
    compile_grammar,
    compile_json_object,
    compile_json_schema,
    compile_lark,
    compile_regex,
    lltokenizer_for,
)
from mistralrs.engine.tokenizer import TextTokenizer, tokenizer_from_gguf, tokenizer_from_hf_dir

from structured_helpers import PADDING, sample_until_finished
from tiny_models import write_byte_tokenizer

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", "guest"]},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,6}$"}, "maxItems": 3},
        "manager": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/ref"}]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
    "$defs": {
        "ref": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99999}},
            "required": ["id"],
            "additionalProperties": False,
        }
    },
}


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("byte_tokenizer")
    write_byte_tokenizer(path)
    return tokenizer_from_hf_dir(path)


@pytest.fixture(scope="module")
def smol_tok(smollm2_gguf) -> TextTokenizer:
    return tokenizer_from_gguf(smollm2_gguf)


@pytest.fixture(params=["byte", "smollm2"])
def tok(request) -> TextTokenizer:
    return request.getfixturevalue("byte_tok" if request.param == "byte" else "smol_tok")


# ----------------------------------------------------------------------------- sampling under masks
def test_json_schema_outputs_validate(tok):
    grammar = compile_json_schema(PERSON_SCHEMA, strict=True)
    for seed in range(12):
        text = sample_until_finished(grammar, tok, seed)
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_json_object_outputs_are_objects(tok):
    grammar = compile_json_object()
    for seed in range(2):  # strings run to thousands of tokens under random logits
        text = sample_until_finished(grammar, tok, seed, max_steps=20000)
        assert isinstance(json.loads(text), dict), text


def test_regex_outputs_fully_match(tok):
    pattern = r"(19|20)\d{2}-(0[1-9]|1[0-2])-[a-z]{2,5}( [A-Z]\.)?"
    grammar = compile_regex(pattern)
    for seed in range(12):
        text = sample_until_finished(grammar, tok, seed)
        assert re.fullmatch(pattern, text, re.ASCII), text  # \d is [0-9]


def test_choice_outputs_exactly_one_choice(tok):
    # "n" is a prefix of two others: after it the grammar may end or go on
    choices = ["yes", "no", "n", "maybe so", "naïve 🦀", 'say "hi"\n']
    grammar = compile_choice(choices)
    seen = set()
    for seed in range(40):
        text = sample_until_finished(grammar, tok, seed)
        assert text in choices
        seen.add(text)
    assert len(seen) >= 3  # random logits do explore the alternatives


def test_lark_outputs_parse(tok):
    grammar = compile_lark('start: "(" sum ")"\nsum: NUMBER ("+" NUMBER)*\nNUMBER: /[1-9][0-9]{0,2}/\n')
    for seed in range(8):
        text = sample_until_finished(grammar, tok, seed)
        assert re.fullmatch(r"\([1-9]\d{0,2}(\+[1-9]\d{0,2})*\)", text), text


def test_compile_grammar_dispatches_and_refuses_unknown_kinds():
    assert compile_grammar("regex", "a").kind == "regex"
    assert compile_grammar("json_object").kind == "JSON schema"
    with pytest.raises(GrammarError, match="unknown structured-output kind 'xml'"):
        compile_grammar("xml", "<a/>")


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "schema, named",
    [
        ({"type": "string", "not": {"const": "x"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"if": {"type": "string"}, "then": {"maxLength": 3}}, "if"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"type": "string", "nullable": True}, "nullable"),
        ({"type": "string", "x-guidance": {"lenient": True}, "not": {}}, "x-guidance"),
        ({"type": "object", "properties": {"a": {"type": "string", "fooBar": 1}}}, "'fooBar' at #/properties/a"),
        ({"type": "array", "items": [{"type": "integer"}, {"tyep": "string"}]}, "'tyep' at #/items/1"),
        ({"type": "string", "format": "bogus"}, "bogus"),
        ({"type": "strin"}, "strin"),
        ({"$ref": "https://example.com/schema.json"}, "example.com"),
    ],
)
def test_unsupported_schema_is_refused_by_name(schema, named):
    with pytest.raises(GrammarError) as err:
        compile_json_schema(schema)
    assert named in str(err.value)


def test_lark_embedded_json_schemas_get_the_keyword_check():
    ok = compile_lark('start: "x=" v\nv: %json {"type": "integer", "minimum": 0}')
    assert ok.kind == "grammar"
    for bad, named in [('{"type": "object", "nullable": true}', "nullable"),
                       ('{"type": "string", "x-guidance": {"lenient": true}}', "x-guidance")]:
        with pytest.raises(GrammarError, match=named):
            compile_lark(f'start: "a" v\nv: %json {bad}')
    with pytest.raises(GrammarError):  # not JSON after %json: llguidance's own error
        compile_lark('start: v\nv: %json {oops')


def test_annotations_are_accepted():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "T",
        "description": "d",
        "type": "object",
        "properties": {"kind": {"const": "a", "examples": ["a"], "default": "a", "deprecated": False}},
        "oneOf": [{"required": ["kind"]}],
        "discriminator": {"propertyName": "kind"},
    }
    compile_json_schema(schema)


@pytest.mark.parametrize(
    "compile_bad, message",
    [
        (lambda: compile_regex(r"(a)\1"), "backreferences"),
        (lambda: compile_regex("(?=a)a"), "look-around"),
        (lambda: compile_regex("["), "unclosed character class"),
        (lambda: compile_lark("start: undefined_rule"), "undefined_rule"),
        (lambda: compile_choice([]), "at least one"),
        (lambda: compile_choice("yes"), "list of strings"),
        (lambda: compile_choice(["a", 1]), "list of strings"),
        (lambda: compile_json_schema("{}"), "must be an object"),
        (lambda: compile_json_schema({"type": "string", "minLength": 5, "maxLength": 2}), "minLength"),
        (lambda: compile_json_schema({"const": float("nan")}), "not plain JSON"),
    ],
)
def test_invalid_specs_are_refused(compile_bad, message):
    with pytest.raises(GrammarError, match=re.escape(message)):
        compile_bad()


def test_oversize_grammars_are_refused():
    big = "x" * (MAX_GRAMMAR_CHARS + 1)
    with pytest.raises(GrammarError, match="too large"):
        compile_json_schema({"enum": [big]})
    with pytest.raises(GrammarError, match="too large"):
        compile_regex(big)
    with pytest.raises(GrammarError, match="too large"):
        compile_lark(f'start: "{big}"')
    with pytest.raises(GrammarError, match="too large"):
        compile_choice([big[: MAX_GRAMMAR_CHARS // 2 + 1]] * 2)
    with pytest.raises(GrammarError, match=f"limit is {MAX_CHOICES}"):
        compile_choice([str(i) for i in range(MAX_CHOICES + 1)])
    deep: dict = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH + 1):
        deep = {"type": "array", "items": deep}
    with pytest.raises(GrammarError, match="deeper than"):
        compile_json_schema(deep)
    # well under the size limit, nested past what JSON serialization can recurse through
    very_deep: dict = {}
    for _ in range(5000):
        very_deep = {"items": very_deep}
    with pytest.raises(GrammarError, match="too deeply nested"):
        compile_json_schema(very_deep)
    # at the limits, still fine
    compile_choice([big[: MAX_GRAMMAR_CHARS // 2]] * 2)


# ----------------------------------------------------------------------------- masks
def test_mask_never_allows_padding_or_control_tokens(smol_tok):
    # inside a JSON string almost any token fits: the widest mask there is
    state = GrammarState(compile_json_schema({"type": "string"}), smol_tok)
    state.advance(smol_tok.encode('"', add_special=False)[0])
    allowed = state.allowed_tokens()
    assert len(allowed) > smol_tok.vocab_size // 2
    assert int(allowed.max()) < smol_tok.vocab_size
    control = {i for i in range(smol_tok.vocab_size) if smol_tok.is_special(i)}
    assert not control & set(allowed.tolist())  # not even EOS: the string is open

    logits = torch.zeros((1, smol_tok.vocab_size + PADDING))
    BatchMasker(smol_tok).apply(logits, [state])
    assert torch.isneginf(logits[0, smol_tok.vocab_size :]).all()
    kept = (~torch.isneginf(logits[0])).nonzero().flatten()
    assert torch.equal(kept, allowed)


def test_end_of_generation_only_where_the_grammar_may_end(smol_tok):
    eog = set(smol_tok.eog_ids)
    state = GrammarState(compile_choice(["yes", "yesterday"]), smol_tok)
    for token in smol_tok.encode("yes", add_special=False):
        assert not eog & set(state.allowed_tokens().tolist())
        state.advance(token)
    assert state.is_accepting() and not state.is_finished()
    assert eog <= set(state.allowed_tokens().tolist())
    for token in smol_tok.encode("terday", add_special=False):
        state.advance(token)
    assert state.is_finished()
    assert set(state.allowed_tokens().tolist()) == eog
    state.advance(smol_tok.eos_id)
    assert state.is_finished()


def test_forbidden_token_raises_and_leaves_the_state_usable(byte_tok):
    state = GrammarState(compile_regex("ab"), byte_tok)
    b, a = byte_tok.encode("b", add_special=False)[0], byte_tok.encode("a", add_special=False)[0]
    with pytest.raises(TokenNotAllowed, match=f"token {b}"):
        state.advance(b)
    with pytest.raises(TokenNotAllowed):
        state.advance(byte_tok.vocab_size + 3)  # a padding id
    state.advance(a)
    state.advance(b)
    assert state.is_finished()


def test_rollback_and_replay_restore_the_mask(smol_tok):
    grammar = compile_json_schema(PERSON_SCHEMA)
    ids = smol_tok.encode('{"name": "Ann", "age": 4', add_special=False)
    state = GrammarState(grammar, smol_tok)
    masks = []
    for token in ids:
        masks.append(state.allowed_tokens())
        state.advance(token)
    state.rollback(3)
    assert state.num_tokens == len(ids) - 3
    assert torch.equal(state.allowed_tokens(), masks[-3])
    state.replay(ids[:-1])
    assert torch.equal(state.allowed_tokens(), masks[-1])
    with pytest.raises(ValueError):
        state.rollback(len(ids))
    # replaying tokens that leave the grammar stops at the first bad one
    with pytest.raises(TokenNotAllowed):
        state.replay(smol_tok.encode('{"nam": 1}', add_special=False))
    state.replay(ids)
    assert state.num_tokens == len(ids)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_batch_masker_masks_only_constrained_rows(byte_tok, device):
    masker = BatchMasker(byte_tok, max_batch=1)  # grows to the batch
    states = [GrammarState(compile_regex("[0-9]+"), byte_tok), None, GrammarState(compile_choice(["xy"]), byte_tok)]
    logits = torch.randn((3, byte_tok.vocab_size + PADDING), device=device)
    original = logits.clone()
    masker.apply(logits, states)
    assert torch.equal(logits[1], original[1])  # no grammar: untouched, padding included
    for row, expected in ((0, "0123456789"), (2, "x")):
        kept = (~torch.isneginf(logits[row])).nonzero().flatten().tolist()
        assert sorted(byte_tok.id_to_bytes(i).decode() for i in kept) == sorted(expected)
        assert torch.equal(logits[row, kept], original[row, kept])


@pytest.mark.parametrize("extra_columns", [PADDING, 0, -1])  # padded past the bitmask, exact, one id short
def test_masks_prepared_during_the_forward_pass_equal_the_direct_ones(byte_tok, extra_columns):
    masker = BatchMasker(byte_tok)
    states = [None, GrammarState(compile_regex("[a-c]+"), byte_tok), GrammarState(compile_choice(["q"]), byte_tok)]
    direct = torch.randn((3, byte_tok.vocab_size + extra_columns))
    prepared = direct.clone()
    masker.start(states).apply(prepared)  # the engine starts it before the forward pass
    masker.apply(direct, states)
    assert torch.equal(direct, prepared)


def test_apply_token_bitmask_reads_every_bit():
    vocab = 70
    allowed = torch.tensor([0, 31, 32, 63, 64, 69])
    bits = torch.zeros(bitmask_words(vocab) * 32, dtype=torch.int64)
    bits[allowed] = 1
    words = (bits.view(-1, 32) << torch.arange(32)).sum(-1)
    bitmask = words.to(torch.int64).where(words < 2**31, words - 2**32).to(torch.int32).unsqueeze(0)
    logits = torch.zeros((2, vocab + 5))
    apply_token_bitmask(logits, bitmask, [1])
    assert torch.equal((~torch.isneginf(logits[1])).nonzero().flatten(), allowed)
    assert not torch.isneginf(logits[0]).any()


def test_lltokenizer_is_cached_and_matches_the_pieces(smol_tok, byte_tok):
    lltok = lltokenizer_for(smol_tok)
    assert lltokenizer_for(smol_tok) is lltok
    assert lltokenizer_for(byte_tok) is not lltok
    assert lltok.vocab_size == smol_tok.vocab_size
    assert set(lltok.eos_tokens) == set(smol_tok.eog_ids) and lltok.eos_token == smol_tok.eos_id
    text = 'Ünïcödé {"key": [1, 2.5e3]} 🦀'
    ids = smol_tok.encode(text, add_special=False)
    assert lltok.decode_bytes(ids) == text.encode()
    assert lltok.tokenize_str(text) == ids


def test_mask_cost_on_smollm2_vocab(smol_tok):
    """Not a hard limit: prints the per-step cost so a regression is visible (-s)."""
    text = '{"name": "Zoe", "age": 31, "role": "user", "score": 0.25, "tags": ["ab", "cd"], "manager": {"id": 7}, "active": true}'
    ids = smol_tok.encode(text, add_special=False)
    s0 = time.perf_counter()
    lltokenizer_for(smol_tok)  # once per tokenizer (cached)
    s1 = time.perf_counter()
    grammar = compile_json_schema(PERSON_SCHEMA)
    s2 = time.perf_counter()
    state = GrammarState(grammar, smol_tok)
    s3 = time.perf_counter()
    masker = BatchMasker(smol_tok)
    fill, apply = [], []
    logits = torch.zeros((1, smol_tok.vocab_size + PADDING))
    for token in ids:
        t0 = time.perf_counter()
        bitmask, rows = masker.fill([state])
        t1 = time.perf_counter()
        apply_token_bitmask(logits, bitmask, rows)
        t2 = time.perf_counter()
        fill.append(t1 - t0)
        apply.append(t2 - t1)
        state.advance(token)
    us = lambda xs: f"median {statistics.median(xs) * 1e6:.0f} us, max {max(xs) * 1e6:.0f} us"
    print(
        f"\nSmolLM2 vocab {smol_tok.vocab_size}: tokenizer bridge {(s1 - s0) * 1e3:.1f} ms (first use), "
        f"compile {(s2 - s1) * 1e3:.1f} ms, matcher {(s3 - s2) * 1e3:.1f} ms; over {len(ids)} steps: "
        f"mask fill {us(fill)}; apply to logits {us(apply)}"
    )
    assert json.loads(text) and state.is_accepting()

    # a batch of 8 constrained rows, filled on llguidance's thread pool
    states = [GrammarState(compile_json_schema(PERSON_SCHEMA), smol_tok) for _ in range(8)]
    for i, row in enumerate(states):
        row.replay(ids[: 5 * i])
    logits = torch.zeros((8, smol_tok.vocab_size + PADDING))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        masker.apply(logits, states)
        times.append(time.perf_counter() - t0)
    print(f"batch of 8: fill + apply {us(times)}")
