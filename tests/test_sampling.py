"""Sampler filters and stop strings."""

from __future__ import annotations

import pytest
import torch

from mistralrs.engine.core.sampler import InvalidSamplingParam, Sampler, SampleRow, SamplingParams, make_generator
from mistralrs.engine.core.stop_strings import StopStringFilter


def draw(logits, params, seed=0, n=200):
    sampler = Sampler()
    g = make_generator(seed, torch.device("cpu"))
    return {sampler(logits.clone(), [SampleRow(params, g, [], [])]).tokens[0] for _ in range(n)}


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    out = Sampler()(logits, [SampleRow(SamplingParams(temperature=0), None, [], []),
                             SampleRow(SamplingParams(top_k=1), None, [], [])])
    assert out.tokens == [1, 0] and out.logprobs == [None, None]


def test_top_k_keeps_k_best():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert draw(logits, SamplingParams(temperature=5.0, top_k=2)) == {0, 1}


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert draw(probs.log(), SamplingParams(temperature=1.0, top_p=0.75)) == {0, 1}
    assert draw(probs.log(), SamplingParams(temperature=1.0, top_p=0.1)) == {0}


def test_min_p_drops_unlikely_tokens():
    probs = torch.tensor([[0.6, 0.3, 0.07, 0.03]])
    assert draw(probs.log(), SamplingParams(temperature=1.0, min_p=0.2)) == {0, 1}


def test_same_seed_same_draws_and_rows_independent():
    logits = torch.zeros(2, 1000)
    params = [SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=1.0, seed=7)]
    sampler = Sampler()
    g1 = [make_generator(7, torch.device("cpu")) for _ in range(2)]
    g2 = [make_generator(7, torch.device("cpu")) for _ in range(2)]
    a = [sampler(logits.clone(), [SampleRow(p, g, [], []) for p, g in zip(params, g1)]).tokens for _ in range(5)]
    b = [sampler(logits.clone(), [SampleRow(p, g, [], []) for p, g in zip(params, g2)]).tokens for _ in range(5)]
    assert a == b
    assert all(row[0] == row[1] for row in a)  # same seed per row gives the same stream
    assert len({row[0] for row in a}) > 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=0),
                                 dict(min_p=2), dict(stop=[""]), dict(n=0), dict(presence_penalty=3),
                                 dict(frequency_penalty=-2.5), dict(repetition_penalty=0), dict(logprobs=21),
                                 dict(logit_bias={5: 101}), dict(logit_bias={500: 1.0}), dict(stop_token_ids=[-1])])
def test_invalid_params_rejected_naming_the_field(bad):
    with pytest.raises(InvalidSamplingParam) as err:
        SamplingParams(**bad).validate(vocab_size=100)
    assert err.value.param == next(iter(bad))


def row(params, output=(), prompt=()):
    return SampleRow(params, make_generator(0, torch.device("cpu")), list(prompt), list(output))


def test_logit_bias_can_force_a_token():
    logits = torch.zeros(1, 10)
    out = Sampler()(logits, [row(SamplingParams(temperature=0, logit_bias={7: 50.0}))])
    assert out.tokens == [7]


def test_presence_and_frequency_penalties():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    # token 0 was generated twice: frequency 0.1*2 + presence 0.5 pushes it below token 1
    out = Sampler()(logits, [row(SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.1),
                                 output=[0, 0])])
    assert out.tokens == [1]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, 1.5, -1.0]])
    out = Sampler()(logits, [row(SamplingParams(temperature=0, repetition_penalty=2.0), prompt=[0])])
    assert out.tokens == [1]  # 2.0 / 2 = 1.0 < 1.5


def test_logprobs_are_of_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    out = Sampler()(logits, [row(SamplingParams(temperature=0, logprobs=2, logit_bias={0: 10.0}))])
    chosen, top = out.logprobs[0]
    raw = logits.log_softmax(-1)[0]
    assert out.tokens == [0]
    assert chosen == pytest.approx(float(raw[0]))
    assert [t for t, _ in top] == [2, 1] and top[0][1] == pytest.approx(float(raw[2]))


def test_stop_string_across_pieces_is_not_emitted():
    f = StopStringFilter(["</end>"])
    out = [f.push(p) for p in ["Hello </", "en", "d> tail"]]
    assert "".join(out) == "Hello " and f.stopped
    assert f.flush() == ""


def test_partial_stop_prefix_released_when_it_diverges():
    f = StopStringFilter(["STOP"])
    assert f.push("ab ST") == "ab "
    assert f.push("AR") == "STAR"
    assert f.flush() == ""


def test_earliest_of_several_stops_wins():
    f = StopStringFilter(["xyz", "b"])
    assert f.push("aaxyzb") == "aa"


def test_no_stops_passes_through():
    f = StopStringFilter([])
    assert f.push("abc") == "abc" and f.flush() == ""


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1e-45), SamplingParams(temperature=5e-324), SamplingParams(temperature=1e-300),
    SamplingParams(temperature=1.0, top_p=1e-300), SamplingParams(temperature=1.0, top_k=2**31 - 1),
    SamplingParams(temperature=1.0, repetition_penalty=0.01),
])
def test_extreme_but_valid_values_sample_a_real_token(params):
    """Values the validator lets through must not make the sampler raise (a failed step used to end
    every sequence in the batch): tiny temperatures sample greedily, a top_p that rounds to 0 keeps the
    best token, a huge top_k is the whole vocabulary."""
    params.validate(vocab_size=1000)
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0))
    tokens = draw(logits, params, n=5)
    assert tokens <= set(range(1000))
    if params.temperature < 1e-5 or params.top_p < 1e-6:
        assert tokens == {int(logits.argmax())}


@pytest.mark.parametrize("bad", [dict(top_k=2**63), dict(repetition_penalty=1e-38)])
def test_values_the_sampler_cannot_handle_are_rejected(bad):
    with pytest.raises(InvalidSamplingParam) as err:
        SamplingParams(**bad).validate(vocab_size=100)
    assert err.value.param == next(iter(bad))
