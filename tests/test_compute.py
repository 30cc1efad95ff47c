"""Training compute, utilisation and cost (course_lib.headline.compute) against the report's numbers and plain loops."""

import math

import pytest

from course_lib.headline import facts
from course_lib.headline.compute import achieved_flops_per_gpu, gpu_utilisation, training_cost, training_flops


def test_v3_cost_is_5_576_million():
    assert training_cost(facts.V3_GPU_HOURS, facts.V3_ASSUMED_PRICE_PER_GPU_HOUR) == pytest.approx(5.576e6)


def test_pretraining_hours_match_the_per_trillion_rate():
    assert facts.V3_GPU_HOURS["pre-training"] == pytest.approx(
        facts.V3_TRAINING_TOKENS / 1e12 * facts.V3_GPU_HOURS_PER_TRILLION_TOKENS)


def test_flops_equal_a_loop_over_tokens():
    params, tokens = 1000, 37
    loop = 0
    for _ in range(tokens):  # per token: 2 FLOPs a weight forward, 4 backward
        loop += 2 * params + 4 * params
    assert training_flops(params, tokens) == loop


def test_v3_utilisation_is_about_a_third_of_bf16_peak():
    mfu = gpu_utilisation(37e9, 14.8e12, facts.V3_GPU_HOURS["pre-training"], facts.PEAK_FLOPS["H100/H800 BF16"])
    assert 0.34 < mfu < 0.35
    assert achieved_flops_per_gpu(37e9, 14.8e12, 2.664e6) == pytest.approx(342.6e12, rel=1e-3)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_bad_numbers_are_rejected(bad):
    with pytest.raises(ValueError, match="must be > 0 and finite"):
        training_flops(bad, 1e9)
    with pytest.raises(ValueError, match="must be > 0 and finite"):
        gpu_utilisation(1e9, 1e9, 1.0, bad)


@pytest.mark.parametrize("bad", ["1e9", True])
def test_a_value_that_is_not_a_number_is_a_type_error(bad):
    with pytest.raises(TypeError, match="activated_params must be a number"):
        training_flops(bad, 1e9)
    with pytest.raises(TypeError, match="peak_flops must be a number"):
        gpu_utilisation(1e9, 1e9, 1.0, bad)
