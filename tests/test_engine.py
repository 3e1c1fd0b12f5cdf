"""The continuous-batching engine on a tiny model: preemption, chunked prefill, prefix reuse,
aborts and batch invariance — each checked against the same request run alone."""

from __future__ import annotations

import dataclasses

import pytest

import mistralrs
from mistralrs.engine.core.llm_engine import ContextLengthExceeded, LLMEngine
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.scheduler import QueueFull

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("engine") / "m"
    make_tiny_llama(path, max_position_embeddings=512)
    return mistralrs.load("model=llama", f"model.source={path}", "model.dtype=float32", "model.device=cpu",
                          "model.max_seq_len=512")


def make_engine(llm, **overrides) -> LLMEngine:
    cfg = dataclasses.replace(llm.config.engine, **overrides)
    return LLMEngine(llm.loaded, cfg)


def run_all(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    outputs: dict[int, list[int]] = {}
    seqs = []
    for i, ids in enumerate(prompts):
        seqs += engine.add_request(ids, params, lambda ev, i=i: outputs.setdefault(i, []).append(ev.token))
    engine.run_until_done(seqs)
    return [outputs[i] for i in range(len(prompts))]


def prompts(n: int, length: int = 20) -> list[list[int]]:
    return [[1] + [(7 * i + 3 * j) % 250 + 3 for j in range(length - 1)] for i in range(n)]


GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def solo(llm):
    """Each prompt alone on a roomy engine: the reference for everything below."""
    return [run_all(make_engine(llm), [p], GREEDY)[0] for p in prompts(16)]


def test_batch_invariance_16_concurrent(llm, solo):
    engine = make_engine(llm, max_seqs=16)
    assert run_all(engine, prompts(16), GREEDY) == solo


def test_preemption_when_cache_runs_out(llm, solo):
    # 12 blocks of 4 tokens: room for about one and a half sequences of 32 tokens at a time
    engine = make_engine(llm, max_seqs=8, block_size=4, kv_cache_tokens=48)
    assert run_all(engine, prompts(6), GREEDY) == solo[:6]
    assert engine.scheduler.preemptions > 0
    assert engine.pool.stats().free == engine.pool.num_blocks


def test_chunked_prefill(llm, solo):
    engine = make_engine(llm, max_batch_tokens=7)
    assert run_all(engine, prompts(4), GREEDY) == solo[:4]


def test_prefix_blocks_are_reused(llm):
    engine = make_engine(llm, block_size=4)
    shared = prompts(1, 33)[0]
    a, b = shared + [10, 11], shared + [12, 13, 14]
    out_a = run_all(engine, [a], GREEDY)
    seqs = engine.add_request(b, GREEDY, lambda ev: None)
    engine.step()  # blocks are assigned when the sequence is scheduled
    assert seqs[0].prefix_hit_tokens == 32
    engine.run_until_done(seqs)
    fresh = make_engine(llm, block_size=4)
    assert run_all(fresh, [b], GREEDY) == run_all(engine, [b], GREEDY)
    assert out_a == run_all(fresh, [a], GREEDY)
    assert engine.stats().prefix_hit_tokens >= 32


def test_abort_frees_blocks_at_once(llm):
    engine = make_engine(llm, block_size=4)
    seqs = engine.add_request(prompts(1, 40)[0], dataclasses.replace(GREEDY, max_tokens=100), lambda ev: None)
    for _ in range(3):
        engine.step()
    assert engine.pool.stats().free < engine.pool.num_blocks
    engine.abort(seqs[0])
    assert engine.pool.stats().free == engine.pool.num_blocks and not engine.has_work()


def test_n_choices_with_seed_are_reproducible_and_distinct(llm):
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=11, n=3, ignore_eos=True)
    def choices():
        engine = make_engine(llm)
        outs: dict[int, list[int]] = {}
        seqs = engine.add_request(prompts(1)[0], params, lambda ev: outs.setdefault(ev.index, []).append(ev.token))
        engine.run_until_done(seqs)
        return [outs[i] for i in range(3)]
    first, second = choices(), choices()
    assert first == second
    assert len({tuple(c) for c in first}) > 1


def test_context_length_and_queue_limits(llm):
    engine = make_engine(llm, max_waiting=2)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 512"):
        engine.add_request([5] * 500, SamplingParams(max_tokens=20), lambda ev: None)
    engine.add_request([5] * 10, GREEDY, lambda ev: None)
    engine.add_request([5] * 10, GREEDY, lambda ev: None)
    with pytest.raises(QueueFull):
        engine.add_request([5] * 10, GREEDY, lambda ev: None)


def test_prompt_logprobs_cover_every_prompt_token(llm):
    engine = make_engine(llm)
    events = []
    ids = prompts(1)[0]
    params = SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=2, logprobs=1)
    engine.run_until_done(engine.add_request(ids, params, events.append))
    plp = events[0].prompt_logprobs
    assert plp[0] is None and [p.token for p in plp[1:]] == ids[1:]
    full = llm.logits(ids).log_softmax(-1)
    assert plp[5].logprob == pytest.approx(float(full[4, ids[5]]), abs=1e-5)
    assert events[0].logprob.logprob == pytest.approx(float(full[-1].max()), abs=1e-5)


def test_a_sequence_that_breaks_the_step_fails_alone(llm, monkeypatch):
    """One request whose sampling raises (any cause the validator missed) ends with finish_reason
    "error"; the others in its batch still get every token, equal to running them alone."""
    from mistralrs.engine.core.sampler import Sampler

    engine = make_engine(llm)
    prompts = [[1, 5, 9, 12], [1, 7, 7], [1, 30, 31, 32, 33]]
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    alone = [run_all(make_engine(llm), [p], greedy)[0] for p in prompts]
    original = Sampler.__call__

    def breaks_on_seed_13(self, logits, rows):
        if any(r.params.seed == 13 for r in rows):
            raise RuntimeError("sampler broke")
        return original(self, logits, rows)

    monkeypatch.setattr(Sampler, "__call__", breaks_on_seed_13)
    events: dict[int, list] = {}
    seqs = []
    for i, ids in enumerate(prompts):
        params = dataclasses.replace(greedy, seed=13) if i == 1 else greedy
        seqs += engine.add_request(ids, params, lambda ev, i=i: events.setdefault(i, []).append(ev))
    engine.run_until_done(seqs)
    assert [e.finish_reason for e in events[1]] == ["error"] and seqs[1].finish_reason == "error"
    for i in (0, 2):
        assert [e.token for e in events[i]] == alone[i] and events[i][-1].finish_reason == "length"
    assert engine.pool.stats().free == engine.pool.num_blocks  # the failed sequence's blocks came back


def _constrained_texts(llm, engine: LLMEngine, params: SamplingParams, n_prompts: int) -> list[str]:
    texts: dict[tuple[int, int], str] = {}
    seqs = []
    for i, ids in enumerate(prompts(n_prompts)):
        seqs += engine.add_request(ids, params, lambda ev, i=i: texts.__setitem__(
            (i, ev.index), texts.get((i, ev.index), "") + ev.text))
    engine.run_until_done(seqs)
    assert all(s.finish_reason == "stop" for s in seqs), [s.finish_reason for s in seqs]
    return list(texts.values())


def test_constrained_and_free_sequences_share_batches_through_preemption(llm):
    """A grammar per sequence (n=2 each), sampled at temperature 1 beside free sequences on a cache
    small enough to preempt: every constrained output is a full match, free ones run to length."""
    import re

    from mistralrs.engine.structured import compile_regex

    pattern = r"[a-z]{3,6}-[0-9]{2,4}"
    constrained = SamplingParams(max_tokens=64, temperature=1.0, seed=5, n=2, grammar=compile_regex(pattern))
    free = SamplingParams(max_tokens=24, temperature=1.0, seed=9, ignore_eos=True)
    engine = make_engine(llm, max_seqs=8, block_size=4, kv_cache_tokens=96)
    free_tokens: dict[int, list[int]] = {}
    free_seqs = []
    for i, ids in enumerate(prompts(3, length=30)):
        free_seqs += engine.add_request(ids, free, lambda ev, i=i: free_tokens.setdefault(i, []).append(ev.token))
    texts = _constrained_texts(llm, engine, constrained, 4)
    engine.run_until_done(free_seqs)
    assert len(texts) == 8 and all(re.fullmatch(pattern, t) for t in texts), texts
    assert [len(free_tokens[i]) for i in range(3)] == [24, 24, 24]
    assert engine.scheduler.preemptions > 0
    assert engine.pool.stats().free == engine.pool.num_blocks


def test_a_finished_grammar_ends_the_sequence_with_stop(llm):
    from mistralrs.engine.structured import compile_choice

    engine = make_engine(llm)
    params = SamplingParams(max_tokens=50, temperature=1.0, seed=1, ignore_eos=True,
                            grammar=compile_choice(["alpha", "beta"]))
    assert set(_constrained_texts(llm, engine, params, 6)) <= {"alpha", "beta"}
