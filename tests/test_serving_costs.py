"""A day of serving (course_lib.inference.serving_costs, issue 23): day 6's published figures recomputed from its
inputs, the what-ifs, and the KV-cache sizes of [V3] and FlashMLA's FP8 format."""

import dataclasses

import pytest

from course_lib.inference.serving_costs import (DAY6, DAY6_PUBLISHED, cost_profit_margin, gpu_cost, kv_cache_bytes,
                                                nodes_implied, revenue, revenue_rounding, tokens_cached,
                                                with_cache_hit_share, with_decode_speedup)


def test_day6_cost_exactly():
    assert gpu_cost(DAY6) == DAY6_PUBLISHED["cost"] == 87_072  # 226.75 nodes x 8 GPUs x $2 x 24 h


def test_day6_revenue_within_the_rounding_of_its_token_counts():
    """608B, 342B and 168B are rounded to 1B: the recomputed $562,100 is $73 from the published $562,027, well
    inside the $1,715 that the rounding allows."""
    assert revenue(DAY6) == pytest.approx(562_100)
    assert abs(revenue(DAY6) - DAY6_PUBLISHED["revenue"]) <= revenue_rounding(DAY6)
    assert revenue_rounding(DAY6) == pytest.approx(1_715)


def test_day6_margin():
    published = DAY6_PUBLISHED["revenue"] / gpu_cost(DAY6) - 1
    assert round(100 * published) == 545 and DAY6_PUBLISHED["margin"] == 5.45
    spread = revenue_rounding(DAY6) / gpu_cost(DAY6)
    assert abs(cost_profit_margin(DAY6) - published) <= spread
    assert DAY6.cache_hit_tokens / DAY6.input_tokens == pytest.approx(0.5625)  # "56.3%"


def test_throughputs_imply_the_node_count():
    prefill, decode = nodes_implied(DAY6)
    assert prefill == pytest.approx(608e9 / 86_400 / 73.7e3)
    assert decode == pytest.approx(168e9 / 86_400 / 14.8e3)
    assert prefill + decode == pytest.approx(DAY6.nodes, rel=0.002)  # 226.86 against 226.75


def test_what_ifs():
    same = with_cache_hit_share(DAY6, DAY6.cache_hit_tokens / DAY6.input_tokens)
    assert same.nodes == pytest.approx(DAY6.nodes) and revenue(same) == pytest.approx(revenue(DAY6))
    none_hit = with_cache_hit_share(DAY6, 0.0)
    assert none_hit.nodes > DAY6.nodes and revenue(none_hit) > revenue(DAY6)
    assert revenue(none_hit) == pytest.approx(revenue(dataclasses.replace(DAY6, cache_hit_tokens=0.0)))
    assert with_decode_speedup(DAY6, 1.0).nodes == pytest.approx(DAY6.nodes)
    slower = with_decode_speedup(DAY6, 1 / 1.8)
    prefill, decode = nodes_implied(DAY6)
    assert slower.nodes == pytest.approx(DAY6.nodes * (prefill + 1.8 * decode) / (prefill + decode))
    assert gpu_cost(slower) > gpu_cost(DAY6)


def test_kv_cache_bytes():
    assert kv_cache_bytes() == 1152 and kv_cache_bytes(fp8=True) == 656
    assert kv_cache_bytes() * 61 == 70_272  # [ISCA] Table 1: 70.272 KB per token
    assert tokens_cached(70_272 * 1000, 1152) == 1000
    assert tokens_cached(70_272 * 1000 - 1, 1152) == 999
