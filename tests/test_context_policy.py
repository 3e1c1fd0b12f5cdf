"""The context policy (engine/core/context_policy.py) on its own: what max_tokens a prompt gets, and
which requests the engine refuses."""

from __future__ import annotations

import pytest

from mistralrs.engine.core.context_policy import ContextLengthExceeded, check_fits, completion_budget
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.conf.schema import BUILTIN_SAMPLING, SamplingConfig


def test_an_omitted_max_tokens_is_the_default_capped_by_the_room_left():
    assert completion_budget(10, 256, None, 64) == 64
    assert completion_budget(200, 256, None, 64) == 56
    assert completion_budget(300, 256, None, 64) == 1  # refused by check_fits, not silently empty


def test_a_requested_max_tokens_is_kept_as_asked():
    assert completion_budget(200, 256, 100, 64) == 100


def test_check_fits_refuses_an_overflow_in_openai_words():
    check_fits(200, 56, 256)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 256 tokens; you requested 257"):
        check_fits(200, 57, 256)
    with pytest.raises(ContextLengthExceeded, match="leaving no room for a completion"):
        check_fits(256, 1, 256)


def test_the_error_names_the_callers_field():
    with pytest.raises(ContextLengthExceeded) as info:
        check_fits(200, 100, 256)
    assert str(info.value).endswith("reduce max_tokens.")
    assert info.value.naming("max_completion_tokens").endswith("reduce max_completion_tokens.")
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


def test_sampling_params_take_the_configurations_defaults():
    params = SamplingParams()
    assert params.max_tokens == SamplingConfig.max_tokens
    assert {name: getattr(params, name) for name in BUILTIN_SAMPLING} == BUILTIN_SAMPLING
