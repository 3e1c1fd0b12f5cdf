"""Tokenizers built from GGUF metadata / HF directories must tokenize exactly like llama.cpp."""

from __future__ import annotations

import heapq
import json
import random
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

from mistralrs.engine.tokenizer import (
    IncrementalDetokenizer,
    TextTokenizer,
    TokenizerError,
    tokenizer_from_gguf,
    tokenizer_from_hf_dir,
)
from mistralrs.engine.formats.gguf_parse import GGUFFormatError, read_gguf_metadata
from mistralrs.engine.tokenizer import gguf_vocab
from mistralrs.engine.tokenizer.text_tokenizer import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_USER_DEFINED,
    _bytelevel_to_bytes,
)

from conftest import REFERENCE

SMOLLM2_STEM = "smollm2-135m-instruct-q4_1"
GEMMA3_STEM = "gemma-3-270m-q4_k_m"
UNICODE_TEXT = "Ünïcödé — 日本語のテキスト, emoji 🦀🚀 and accents: café naïve"


def _oracle(stem: str) -> dict:
    return json.loads((REFERENCE / f"{stem}.llamacpp.json").read_text())


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def smollm2_meta(smollm2_gguf) -> dict:
    return read_gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="session")
def gemma3_meta(gemma3_gguf) -> dict:
    return read_gguf_metadata(gemma3_gguf)


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_meta) -> TextTokenizer:
    return tokenizer_from_gguf(smollm2_meta)


@pytest.fixture(scope="session")
def gemma3_tok(gemma3_meta) -> TextTokenizer:
    return tokenizer_from_gguf(gemma3_meta)


def _emulated_spm(meta: dict) -> TextTokenizer:
    """The ``tokenizers`` emulation of SPM (score-ranked merges): the path taken without native kernels."""
    with mock.patch.object(gguf_vocab, "_native_spm", return_value=None):
        return tokenizer_from_gguf(meta)


@pytest.fixture(scope="session")
def gemma3_tok_emulated(gemma3_meta) -> TextTokenizer:
    return _emulated_spm(gemma3_meta)


@pytest.fixture(params=[SMOLLM2_STEM, GEMMA3_STEM, GEMMA3_STEM + ":emulated"])
def model(request, smollm2_tok, gemma3_tok, gemma3_tok_emulated):
    tok = {SMOLLM2_STEM: smollm2_tok, GEMMA3_STEM: gemma3_tok}.get(request.param, gemma3_tok_emulated)
    return tok, _oracle(request.param.split(":")[0])


# ----------------------------------------------------------------------------- GGUF metadata
def _write_tiny_gguf(path):
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -3)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 2.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁ 🦀")
    w.add_uint64("t.u64", 1 << 40)
    w.add_array("t.strs", ["a", "", "▁b", "<0x0A>"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False])
    w.add_array("t.empty", [])
    w.add_tensor("x", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _metadata_via_gguf_reader(path) -> dict:
    """The reference: gguf-py's own (slow) reader."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    out = {}
    for key, field in GGUFReader(path, "r").fields.items():
        if key.startswith("GGUF.") or not field.types:
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                out[key] = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
            elif not field.data:
                out[key] = []
            else:
                arr = np.concatenate([field.parts[i] for i in field.data])
                out[key] = (arr != 0).tolist() if sub == GGUFValueType.BOOL else arr.tolist()
        elif kind == GGUFValueType.STRING:
            out[key] = bytes(field.parts[-1]).decode("utf-8", errors="replace")
        else:
            value = field.parts[-1].tolist()[0]
            out[key] = bool(value) if kind == GGUFValueType.BOOL else value
    return out


def test_read_gguf_metadata_matches_reader(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path)
    fast = read_gguf_metadata(path)
    slow = _metadata_via_gguf_reader(path)
    assert fast == slow
    assert fast["t.u32"] == 7 and fast["t.i32"] == -3 and fast["t.u64"] == 1 << 40
    assert fast["t.f32"] == pytest.approx(0.1) and fast["t.f64"] == 2.5
    assert fast["t.bool"] is True
    assert fast["t.str"] == "héllo ▁ 🦀"
    assert fast["t.strs"] == ["a", "", "▁b", "<0x0A>"]
    assert fast["t.ints"] == [1, -2, 3]
    assert fast["t.floats"] == [0.5, -1.25]
    assert fast["t.bools"] == [True, False]
    assert fast["general.architecture"] == "llama"


def test_read_gguf_metadata_rejects_non_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(60))
    with pytest.raises(GGUFFormatError, match="not a GGUF"):
        read_gguf_metadata(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFFormatError):
        read_gguf_metadata(empty)


def test_real_gguf_metadata(smollm2_meta, gemma3_meta):
    assert smollm2_meta["tokenizer.ggml.model"] == "gpt2"
    assert smollm2_meta["tokenizer.ggml.pre"] == "smollm"
    assert len(smollm2_meta["tokenizer.ggml.tokens"]) == 49152
    assert len(smollm2_meta["tokenizer.ggml.merges"]) == 48900
    assert smollm2_meta["tokenizer.ggml.add_bos_token"] is False
    assert gemma3_meta["tokenizer.ggml.model"] == "llama"
    assert len(gemma3_meta["tokenizer.ggml.tokens"]) == 262144
    assert len(gemma3_meta["tokenizer.ggml.scores"]) == 262144
    assert isinstance(gemma3_meta["tokenizer.ggml.scores"][1000], float)
    assert "tokenizer.chat_template" not in gemma3_meta


# ----------------------------------------------------------------------------- llama.cpp oracle
def test_encode_matches_llamacpp(model):
    tok, oracle = model
    for case in oracle["tokenize"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, add_special=True, parse_special=False) == case["ids"], text
        assert tok.encode(text, add_special=False, parse_special=True) == case["ids_special"], text


def test_prompts_match_llamacpp(model):
    tok, oracle = model
    for prompt in oracle["prompts"]:
        assert tok.encode(prompt["text"], parse_special=True) == prompt["ids"], prompt["text"]


def test_bos_handling(smollm2_tok, gemma3_tok):
    # SmolLM2's GGUF says add_bos_token = False: no BOS even with add_special
    assert smollm2_tok.add_bos is False and smollm2_tok.bos_id == 1
    assert smollm2_tok.encode("") == [] and smollm2_tok.encode("a") == [81]
    assert gemma3_tok.add_bos is True and gemma3_tok.bos_id == 2
    assert gemma3_tok.encode("") == [2]
    assert gemma3_tok.encode("", add_special=False) == []
    assert gemma3_tok.encode("a", add_special=False) == [236746]
    assert gemma3_tok.bos_token == "<bos>" and gemma3_tok.eos_token == "<eos>"
    assert smollm2_tok.bos_token == "<|im_start|>" and smollm2_tok.eos_token == "<|im_end|>"


def test_eog_ids(smollm2_tok, gemma3_tok):
    assert 2 in smollm2_tok.eog_ids  # <|im_end|>
    assert 0 in smollm2_tok.eog_ids  # <|endoftext|>
    assert smollm2_tok.eos_id == 2
    assert {1, 106} <= gemma3_tok.eog_ids  # <eos>, <end_of_turn>
    assert gemma3_tok.special_ids["eot"] == 106
    assert gemma3_tok.is_eog(106) and not gemma3_tok.is_eog(105)
    # llama.cpp also counts '</s>' (a user-defined token in Gemma 3) as end of generation and
    # overrides its type to control, so it is parsed only with parse_special
    assert 212 in gemma3_tok.eog_ids
    assert gemma3_tok.encode("</s>", add_special=False, parse_special=True) == [212]
    assert 212 not in gemma3_tok.encode("</s>", add_special=False)


def test_user_defined_tokens_always_parsed(gemma3_tok):
    # Gemma 3's '<b>', runs of spaces and newlines are USER_DEFINED: split out even without parse_special
    assert gemma3_tok.token_attr(200) & ATTR_USER_DEFINED
    assert gemma3_tok.encode("<b>x", add_special=False) == [200] + gemma3_tok.encode("x", add_special=False)
    assert gemma3_tok.encode("\n\n", add_special=False) == [108]
    # control tokens only with parse_special
    assert gemma3_tok.token_attr(105) & ATTR_CONTROL
    assert gemma3_tok.encode("<start_of_turn>", add_special=False, parse_special=True) == [105]
    assert 105 not in gemma3_tok.encode("<start_of_turn>", add_special=False)


def _llamacpp_spm(text: str, text_to_id: dict[str, int], scores: list[float]) -> list[int]:
    """Direct port of llama.cpp's llm_tokenizer_spm_session::tokenize (text already escaped)."""
    syms = [[i, 1, i - 1, i + 1 if i + 1 < len(text) else -1] for i in range(len(text))]  # start, n, prev, next
    heap: list = []

    def add(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        s = text[syms[left][0] : syms[left][0] + syms[left][1] + syms[right][1]]
        tid = text_to_id.get(s)
        if tid is None:
            return
        heapq.heappush(heap, (-scores[tid], left, right, len(s)))

    for i in range(1, len(syms)):
        add(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        ls, rs = syms[left], syms[right]
        if ls[1] == 0 or rs[1] == 0 or ls[1] + rs[1] != size:
            continue
        ls[1] += rs[1]
        rs[1] = 0
        ls[3] = rs[3]
        if rs[3] >= 0:
            syms[rs[3]][2] = left
        add(ls[2], left)
        add(left, ls[3])
    out = []
    i = 0
    while i != -1 and syms:
        s = text[syms[i][0] : syms[i][0] + syms[i][1]]
        tid = text_to_id.get(s)
        if tid is not None:
            out.append(tid)
        else:
            out.extend(text_to_id[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
        i = syms[i][3]
    return out


def test_spm_matches_llamacpp_algorithm_on_random_text(gemma3_tok, gemma3_meta):
    """The BPE-with-score-ranked-merges equals llama.cpp's SPM merge loop on many strings."""
    tokens = gemma3_meta["tokenizer.ggml.tokens"]
    scores = gemma3_meta["tokenizer.ggml.scores"]
    types = gemma3_meta["tokenizer.ggml.token_type"]
    text_to_id = {t: i for i, t in enumerate(tokens)}
    rng = random.Random(1234)
    normal = [
        t.replace("▁", " ")
        for t, ty in zip(tokens, types)
        if ty == 1 and not any(c in t for c in "<\n\t\r[") and "▁▁" not in t
    ]
    extra = list("aeiouxyz  ,.;!?'\"-éüßøñ日本語中文한국어🦀🚀🧬𠮷ꙮ𓀀0123456789")
    texts = [UNICODE_TEXT, "Hello world", "  "[:1] + "x", "ab" * 40]
    for _ in range(150):
        parts = [rng.choice(normal) for _ in range(rng.randint(1, 12))]
        parts += [rng.choice(extra) for _ in range(rng.randint(0, 6))]
        rng.shuffle(parts)
        text = "".join(parts)
        while "  " in text:  # runs of spaces are user-defined tokens (split out before SPM)
            text = text.replace("  ", " ")
        texts.append(text)
    for text in texts:
        expected = _llamacpp_spm(text.replace(" ", "▁"), text_to_id, scores)
        assert gemma3_tok.encode(text, add_special=False) == expected, text


def test_packed_tables():
    from mistralrs.engine.tokenizer.packed_table import PackedBytes, PackedStrings

    texts = ["a", "", "▁wörld", "\ud800 lone", "🦀" * 3]
    packed = PackedStrings(texts)
    assert len(packed) == 5 and list(packed) == texts and packed[-1] == texts[-1]
    raw = PackedBytes([b"\x00", b"", b"xyz"])
    assert [raw[i] for i in range(3)] == [b"\x00", b"", b"xyz"] and raw.nbytes == 4 + 3 * 8
    with pytest.raises(IndexError):
        packed[5]
    with pytest.raises(TypeError):
        packed["1"]


def test_native_spm_matches_the_tokenizers_emulation(gemma3_tok, gemma3_tok_emulated):
    """The native SPM tokenizer (the default where the kernels build) and the ``tokenizers`` emulation
    give the same ids on text mixing user-defined tokens (runs of spaces, HTML tags), control tokens,
    byte-fallback characters and plain words, with and without parse_special."""
    assert gemma3_tok.hf_tokenizer is None and gemma3_tok_emulated.hf_tokenizer is not None
    rng = random.Random(7)
    pieces = list("abcxyz  \n\n\t.,!?<>/é€😀漢字09") + [
        "<start_of_turn>", "<end_of_turn>", "<bos>", "   ", "\n\n\n", "<unused12>", "<b>", "</div>", "<0x41>",
        "hello", " world", "▁", "ünïcödé", "```python\n", "    def f(x):\n", UNICODE_TEXT]
    texts = ["", " ", "  ", "<start_of_turn>", "a" * 300, " " * 40 + "x", "a\x00b", "x\r\ny", "\ufeffhi", chr(0x10FFFF)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(600)]
    for text in texts:
        for parse_special in (False, True):
            assert (gemma3_tok.encode(text, add_special=False, parse_special=parse_special)
                    == gemma3_tok_emulated.encode(text, add_special=False, parse_special=parse_special)), text


def test_native_spm_lookups_and_unusual_input(gemma3_tok):
    assert gemma3_tok.token_to_id("▁world") == 1902
    assert gemma3_tok.token_to_id("<end_of_turn>") == gemma3_tok.encode("<end_of_turn>", add_special=False,
                                                                           parse_special=True)[0]
    assert gemma3_tok.token_to_id("no such token ▁▁x") is None
    # a lone surrogate (JSON may carry one) is encoded as U+FFFD instead of failing
    assert gemma3_tok.encode("a\ud800b") == gemma3_tok.encode("a\ufffdb")


def test_native_spm_without_byte_tokens_fuses_unknowns():
    """A vocabulary without <0xXX> tokens: characters outside it become one unknown token per run, as
    the ``tokenizers`` emulation (byte_fallback + fuse_unk) does."""
    md = _tiny_spm_meta()
    keep = [i for i, t in enumerate(md["tokenizer.ggml.tokens"]) if not t.startswith("<0x")]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        md[key] = [md[key][i] for i in keep]
    native, emulated = tokenizer_from_gguf(md), _emulated_spm(md)
    assert native.hf_tokenizer is None
    for text in ("hé wörld", "日本 hello 語", "héé", "hello"):
        assert native.encode(text) == emulated.encode(text), text
    assert native.encode("日本", add_special=False).count(0) == 1


# ----------------------------------------------------------------------------- decoding
def test_decode_round_trip(model):
    tok, oracle = model
    for case in oracle["tokenize"]:
        text = case["text"]
        assert tok.decode(case["ids"], skip_special=True) == text
        assert tok.decode(case["ids_special"]) == text  # control tokens rendered as their text
    for prompt in oracle["prompts"]:
        bos = tok.bos_token if tok.add_bos else ""
        assert tok.decode(prompt["ids"]) == bos + prompt["text"]


def test_decode_skip_special(smollm2_tok, gemma3_tok):
    ids = smollm2_tok.encode("<|im_start|>user\nHi<|im_end|>", parse_special=True)
    assert smollm2_tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>"
    assert smollm2_tok.decode(ids, skip_special=True) == "user\nHi"
    ids = gemma3_tok.encode("<start_of_turn>user\nHi<end_of_turn>", parse_special=True)
    assert ids[0] == 2
    assert gemma3_tok.decode(ids) == "<bos><start_of_turn>user\nHi<end_of_turn>"
    assert gemma3_tok.decode(ids, skip_special=True) == "user\nHi"


def test_pieces(smollm2_tok, gemma3_tok):
    assert smollm2_tok.id_to_token(905) == "Ġworld"
    assert smollm2_tok.id_to_piece(905) == " world"
    assert smollm2_tok.token_to_id("Ġworld") == 905
    assert gemma3_tok.id_to_token(1902) == "▁world"
    assert gemma3_tok.id_to_piece(1902) == " world"
    assert gemma3_tok.id_to_bytes(248) == b"\n"  # <0x0A>
    assert gemma3_tok.token_attr(248) & ATTR_BYTE
    assert gemma3_tok.id_to_piece(2) == "<bos>"
    with pytest.raises(TokenizerError, match="out of range"):
        gemma3_tok.decode([262144])
    with pytest.raises(TokenizerError):
        smollm2_tok.id_to_piece(-1)


# ----------------------------------------------------------------------------- streaming
def _stream(tok: TextTokenizer, ids, **kw) -> list[str]:
    detok = IncrementalDetokenizer(tok, **kw)
    out = [detok.push(i) for i in ids]
    out.append(detok.flush())
    return out


@pytest.mark.parametrize("text", [UNICODE_TEXT, "𝔘𝔫𝔦 𠮷 ꙮ 𓀀 🩻 — ok"])
def test_incremental_detokenizer_unicode(smollm2_tok, gemma3_tok, text):
    for tok in (smollm2_tok, gemma3_tok):
        ids = tok.encode(text)
        pieces = _stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids, skip_special=True) == text
        assert not any("\ufffd" in p for p in pieces)
        # multi-byte characters split over byte tokens are held back, not emitted in halves
        assert "" in pieces[:-1]


def test_incremental_detokenizer_special_and_prompt(smollm2_tok, gemma3_tok):
    ids = gemma3_tok.encode("<start_of_turn>model\nHi 🦀<end_of_turn>", parse_special=True)
    assert "".join(_stream(gemma3_tok, ids)) == "model\nHi 🦀"
    assert "".join(_stream(gemma3_tok, ids, skip_special=False)) == gemma3_tok.decode(ids)
    # a character whose first bytes end the prompt is completed by the generated token
    crab = smollm2_tok.encode("🦀")
    assert len(crab) > 1
    prompt = smollm2_tok.encode("Hi ") + crab[:1]
    assert "".join(_stream(smollm2_tok, crab[1:], prompt_ids=prompt)) == "🦀"


def test_incremental_detokenizer_matches_decode_on_random_ids(smollm2_tok, gemma3_tok):
    """Even for arbitrary (invalid UTF-8) id sequences the streamed text equals decode()."""
    rng = random.Random(7)
    for tok in (smollm2_tok, gemma3_tok):
        for _ in range(200):
            ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 12))]
            if tok is gemma3_tok:  # mix in many byte-fallback tokens
                ids += [rng.randrange(238, 238 + 256) for _ in range(rng.randint(0, 8))]
                rng.shuffle(ids)
            for skip in (True, False):
                assert "".join(_stream(tok, ids, skip_special=skip)) == tok.decode(ids, skip_special=skip)


def test_encode_thread_safe(smollm2_tok):
    text = "<|im_start|>user\nHi<|im_end|>"
    with_special = smollm2_tok.encode(text, parse_special=True)
    without = smollm2_tok.encode(text)
    assert with_special != without

    def work(i: int) -> bool:
        if i % 2:
            return smollm2_tok.encode(text, parse_special=True) == with_special
        return smollm2_tok.encode(text) == without

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(400)))


# ----------------------------------------------------------------------------- errors / synthetic GGUF
def _tiny_spm_meta(**over) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    # higher score = merged earlier; '▁h' has the lowest score
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁h"]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    md.update(over)
    return md


def test_synthetic_spm_space_prefix():
    tok = tokenizer_from_gguf(_tiny_spm_meta())  # add_space_prefix defaults to true for SPM
    assert tok.add_bos and tok.strip_leading_space
    ids = tok.encode("hello world")
    assert [tok.id_to_token(i) for i in ids] == ["<s>", "▁hello", "▁world"]
    text_to_id = {t: i for i, t in enumerate(_tiny_spm_meta()["tokenizer.ggml.tokens"])}
    scores = _tiny_spm_meta()["tokenizer.ggml.scores"]
    for text in ("hello world", "hellohello", "helo wrld", "ohell", "hé world"):
        assert tok.encode(text, add_special=False) == _llamacpp_spm("▁" + text.replace(" ", "▁"), text_to_id, scores)
    assert tok.decode(ids, skip_special=True) == "hello world"
    assert "".join(_stream(tok, ids)) == "hello world"
    # byte fallback for characters outside the vocabulary
    ids = tok.encode("hé", add_special=False)
    assert [tok.id_to_token(i) for i in ids] == ["▁h", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "hé"
    # after a special token the space prefix is added again (llama.cpp: is_prev_special)
    ids = tok.encode("hello</s>hello", add_special=False, parse_special=True)
    assert [tok.id_to_token(i) for i in ids] == ["▁hello", "</s>", "▁hello"]
    # a generation continuing a prompt keeps its leading space
    assert "".join(_stream(tok, tok.encode("world", add_special=False), prompt_ids=[1, 21])) == " world"
    tok2 = tokenizer_from_gguf(_tiny_spm_meta(**{"tokenizer.ggml.add_space_prefix": False}))
    assert [tok2.id_to_token(i) for i in tok2.encode("hello world", add_special=False)] == ["hello", "▁world"]


def test_tokenizer_errors():
    with pytest.raises(TokenizerError, match="unsupported tokenizer.ggml.model 'bert'"):
        tokenizer_from_gguf(_tiny_spm_meta(**{"tokenizer.ggml.model": "bert"}))
    md = _tiny_spm_meta()
    del md["tokenizer.ggml.tokens"]
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf(md)
    with pytest.raises(TokenizerError, match="no 'tokenizer.ggml.model'"):
        tokenizer_from_gguf({"general.architecture": "llama"})
    md = _tiny_spm_meta()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"][:-1] + ["hello"]
    with pytest.raises(TokenizerError, match="duplicate token"):
        tokenizer_from_gguf(md)
    with pytest.raises(TokenizerError, match="merges"):
        tokenizer_from_gguf(_tiny_spm_meta(**{"tokenizer.ggml.model": "gpt2"}))
    assert issubclass(TokenizerError, ValueError)


def test_unknown_pre_warns(smollm2_meta, caplog):
    md = dict(smollm2_meta)
    md["tokenizer.ggml.pre"] = "no-such-pre"
    with caplog.at_level("WARNING"):
        tok = tokenizer_from_gguf(md)
    assert "no-such-pre" in caplog.text
    assert tok.pre == "gpt2"
    assert tok.encode("Hello world") == [19556, 905]


PRE_TEXT = "Hello, world!! 12345 $x `y` I'M\n\n  z 1234567"


@pytest.mark.parametrize(
    ("pre", "words"),
    [
        # llama.cpp 'default': [\p{P}$+<=>^~|]+, then GPT-2, then \p{N}+, then [0-9]{3}, each isolating its matches
        ("default", ["Hello", ",", " world", "!!", " ", "123", "45", " ", "$", "x", " `", "y", "`", " I", "'", "M", "\n\n ", " z", " ", "123", "456", "7"]),
        ("gpt-2", ["Hello", ",", " world", "!!", " 12345", " $", "x", " `", "y", "`", " I", "'", "M", "\n\n ", " z", " 1234567"]),
        ("smollm", ["Hello", ",", " world", "!!", " ", "1", "2", "3", "4", "5", " $", "x", " `", "y", "`", " I", "'", "M", "\n\n ", " z", " ", *"1234567"]),
        ("llama-bpe", ["Hello", ",", " world", "!!", " ", "123", "45", " $", "x", " `", "y", "`", " I", "'M", "\n\n", " ", " z", " ", "123", "456", "7"]),
        ("qwen2", ["Hello", ",", " world", "!!", " ", *"12345", " $", "x", " `", "y", "`", " I", "'M", "\n\n", " ", " z", " ", *"1234567"]),
    ],
)
def test_bpe_pre_tokenizers(pre, words, smollm2_meta):
    md = dict(smollm2_meta)
    md["tokenizer.ggml.pre"] = pre
    tok = tokenizer_from_gguf(md)
    pre_tok = tok.hf_tokenizer.pre_tokenizer
    got = [_bytelevel_to_bytes(w).decode() for w, _ in pre_tok.pre_tokenize_str(PRE_TEXT)]
    assert got == words
    assert tok.decode(tok.encode(PRE_TEXT)) == PRE_TEXT
    assert tok.add_bos is False  # the GGUF's add_bos_token wins over the llama3 default


# ----------------------------------------------------------------------------- HF directory
def _write_hf_bytelevel(path, *, post_bos: bool, config: dict, generation: dict | None = None, jinja: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["Hello world, hello tokenizers!", "The quick brown fox jumps over the lazy dog.", UNICODE_TEXT] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(["<think>"])  # user-defined (non-special) added token
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))]
        )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if generation is not None:
        (path / "generation_config.json").write_text(json.dumps(generation))
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja)
    return tok


def test_hf_dir_bytelevel(tmp_path):
    d = tmp_path / "bl"
    hf = _write_hf_bytelevel(
        d,
        post_bos=True,
        config={"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "from-config"},
        generation={"eos_token_id": [2, 0]},
        jinja="from-jinja",
    )
    tok = tokenizer_from_hf_dir(d)
    assert tok.kind == "hf"
    assert tok.bos_id == 0 and tok.eos_id == 2
    assert tok.add_bos is True  # detected from the post-processor
    assert tok.eog_ids == {0, 2}
    assert tok.chat_template == "from-jinja"
    text = "<|im_start|>user\nHello <think>world<|im_end|>"
    plain = hf.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, add_special=False, parse_special=True) == plain
    no_special = tok.encode(text, add_special=False)
    assert 1 not in no_special and 2 not in no_special
    assert hf.token_to_id("<think>") in no_special  # user-defined tokens always parsed
    ids = tok.encode(text, parse_special=True)
    assert ids[0] == 0 and ids[1:] == plain
    assert tok.decode(ids) == "<|endoftext|>" + text
    assert tok.decode(ids, skip_special=True) == "user\nHello <think>world"
    assert tok.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True)
    uids = tok.encode(UNICODE_TEXT, add_special=False)
    assert tok.decode(uids) == UNICODE_TEXT
    assert "".join(_stream(tok, uids)) == UNICODE_TEXT
    rare = tok.encode("x 𠮷 y", add_special=False)  # not in the training corpus: single bytes
    pieces = _stream(tok, rare)
    assert "".join(pieces) == "x 𠮷 y" and "" in pieces[:-1] and "\ufffd" not in "".join(pieces)


def test_hf_dir_config_flags(tmp_path):
    d = tmp_path / "cfg"
    _write_hf_bytelevel(
        d,
        post_bos=True,
        config={
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "add_bos_token": False,
            "chat_template": [{"name": "default", "template": "T1"}, {"name": "tool_use", "template": "T2"}],
        },
        generation={"eos_token_id": 2},
    )
    tok = tokenizer_from_hf_dir(d)
    assert tok.add_bos is False  # tokenizer_config wins over the post-processor
    assert tok.encode("Hello") == tok.encode("Hello", add_special=False)
    assert tok.chat_template == "T1" and tok.named_chat_templates["tool_use"] == "T2"
    assert 2 in tok.eog_ids and 0 in tok.eog_ids  # <|endoftext|> is a special token llama.cpp counts as EOG


def test_hf_dir_sentencepiece_style(tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for w in ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "llo", "hello", "▁hello", "▁w", "or", "▁wor", "ld", "▁world"]:
        vocab[w] = len(vocab)
    merges = [("h", "e"), ("l", "l"), ("ll", "o"), ("he", "llo"), ("▁", "hello"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld"), ("▁", "h")]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    d = tmp_path / "spm"
    d.mkdir()
    hf.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    tok = tokenizer_from_hf_dir(d)
    assert tok.strip_leading_space
    ids = tok.encode("hello worldé")
    assert ids[0] == 1
    assert tok.decode(ids, skip_special=True) == "hello worldé" == hf.decode(ids, skip_special_tokens=True)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == "hello worldé" and "" in pieces[:-1]
    assert tok.eog_ids == {2}


def test_hf_dir_missing(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        tokenizer_from_hf_dir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stem", [SMOLLM2_STEM, GEMMA3_STEM])
def test_hf_dir_of_transformers_conversion_matches_llamacpp(stem, smollm2_gguf, gemma3_gguf, tmp_path):
    """transformers converts the GGUF tokenizer to tokenizer.json; loading that directory must
    tokenize like llama.cpp too (slow: the conversion takes 8-25 s)."""
    transformers = pytest.importorskip("transformers")
    gguf_path = smollm2_gguf if stem == SMOLLM2_STEM else gemma3_gguf
    hf = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    hf.save_pretrained(str(tmp_path))
    tok = tokenizer_from_hf_dir(tmp_path)
    oracle = _oracle(stem)
    for case in oracle["tokenize"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.encode(case["text"], add_special=False, parse_special=True) == case["ids_special"], case["text"]
        assert tok.decode(case["ids"], skip_special=True) == case["text"]
    for prompt in oracle["prompts"]:
        assert tok.encode(prompt["text"], parse_special=True) == prompt["ids"]
