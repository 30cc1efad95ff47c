"""What a day of serving DeepSeek-V3 costs and earns, and what the KV cache holds ([INFRA] open-infra-index day 6,
"DeepSeek-V3/R1 Inference System Overview", 1 Mar 2025; FlashMLA's FP8 KV-cache format).

The day (2025-02-27 12:00 to 02-28 12:00 UTC+8): on average 226.75 nodes of 8 H800 GPUs, priced at $2 per GPU-hour;
608B input tokens of which 342B hit the on-disk KV cache, 168B output tokens; about 73.7k input tokens/s per node
in prefill (cache hits included) and 14.8k output tokens/s per node in decode. At R1's prices the theoretical
revenue is $562,027 and the cost-profit margin 545%. The token counts are published rounded to 1B, so revenue
recomputed from them lands within ``revenue_rounding`` of the published figure (tests/test_serving_costs.py).

The what-ifs (``with_cache_hit_share``, ``with_decode_speedup``) are this course's simple models, stated where they
are defined: node counts scale with the nodes that the two throughputs imply (``nodes_implied``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from course_lib.core.validation import boundary
from course_lib.inference import arguments

SECONDS_PER_DAY = 86_400
PER_MILLION = 1e-6
H800_MEMORY_BYTES_PER_S = 3.35e12  # HBM3 bandwidth, NVIDIA's H100 SXM data sheet (the H800 keeps its memory)


@dataclass(frozen=True)
class ServingDay:
    """One day of a serving deployment: its GPUs and prices, its traffic and its throughputs.

    nodes: average nodes in service; gpus_per_node; price_per_gpu_hour (US$); input_tokens, cache_hit_tokens
    (input tokens whose KV cache was found on disk), output_tokens; prices per million tokens (US$) of a cache-hit
    input, a missed input and an output token; prefill_tokens_per_node (input tokens/s per prefill node, hits
    included) and decode_tokens_per_node (output tokens/s per decode node). Raises TypeError / ValueError for
    values that are not finite numbers >= 0 (nodes, GPUs and throughputs > 0) or more hits than input tokens.
    """

    nodes: float
    gpus_per_node: int
    price_per_gpu_hour: float
    input_tokens: float
    cache_hit_tokens: float
    output_tokens: float
    price_hit: float
    price_miss: float
    price_output: float
    prefill_tokens_per_node: float
    decode_tokens_per_node: float

    def __post_init__(self) -> None:
        arguments.serving_day(self)


# [INFRA] open-infra-index, day 6 (202502OpenSourceWeek/day_6_one_more_thing_deepseekV3R1_inference_system_overview.md)
DAY6 = ServingDay(nodes=226.75, gpus_per_node=8, price_per_gpu_hour=2.0, input_tokens=608e9,
                  cache_hit_tokens=342e9, output_tokens=168e9, price_hit=0.14, price_miss=0.55, price_output=2.19,
                  prefill_tokens_per_node=73.7e3, decode_tokens_per_node=14.8e3)
DAY6_PUBLISHED = {"cost": 87_072, "revenue": 562_027, "margin": 5.45}  # US$ per day, US$ per day, 545%


@boundary(arguments.gpu_cost)
def gpu_cost(day: ServingDay) -> float:
    """The day's GPU rental in US$: nodes x GPUs per node x price per GPU-hour x 24 h."""
    return day.nodes * day.gpus_per_node * day.price_per_gpu_hour * 24


@boundary(arguments.revenue)
def revenue(day: ServingDay) -> float:
    """The day's theoretical revenue in US$, every token billed at the list price: cache-hit input, missed input
    and output tokens, each times its price per million."""
    missed = day.input_tokens - day.cache_hit_tokens
    return PER_MILLION * (day.cache_hit_tokens * day.price_hit + missed * day.price_miss
                          + day.output_tokens * day.price_output)


@boundary(arguments.cost_profit_margin)
def cost_profit_margin(day: ServingDay) -> float:
    """(revenue - cost) / cost, as a fraction (5.45 is day 6's 545%)."""
    return revenue(day) / gpu_cost(day) - 1


@boundary(arguments.revenue_rounding)
def revenue_rounding(day: ServingDay, step: float = 1e9) -> float:
    """How far the revenue can move when each published token count is only known to within +-step / 2 (day 6
    rounds to 1B): hits and outputs +-step / 2 each, the missed inputs (input - hits) +-step."""
    return PER_MILLION * step * (day.price_hit / 2 + day.price_miss + day.price_output / 2)


@boundary(arguments.nodes_implied)
def nodes_implied(day: ServingDay) -> tuple[float, float]:
    """(prefill nodes, decode nodes) that the day's traffic needs at the published throughputs, on average:
    input tokens per second / prefill_tokens_per_node, output tokens per second / decode_tokens_per_node."""
    return (day.input_tokens / SECONDS_PER_DAY / day.prefill_tokens_per_node,
            day.output_tokens / SECONDS_PER_DAY / day.decode_tokens_per_node)


def _rescaled(day: ServingDay, changed: ServingDay) -> ServingDay:
    """``changed`` with its nodes scaled by the nodes its throughputs imply over the nodes ``day``'s imply."""
    scale = sum(nodes_implied(changed)) / sum(nodes_implied(day))
    return dataclasses.replace(changed, nodes=day.nodes * scale)


@boundary(arguments.with_cache_hit_share)
def with_cache_hit_share(day: ServingDay, share: float) -> ServingDay:
    """The day with another share of input tokens hitting the KV cache. A model, not a measurement: a hit costs
    no prefill compute (it is read from disk), so the prefill throughput per node counted in input tokens grows as
    1 / (1 - share) (the day's own throughput per MISSED token kept); nodes scale with ``nodes_implied``. Hits
    pay price_hit instead of price_miss. share in [0, 1)."""
    missed_per_node = day.prefill_tokens_per_node * (1 - day.cache_hit_tokens / day.input_tokens)
    changed = dataclasses.replace(day, cache_hit_tokens=share * day.input_tokens,
                                  prefill_tokens_per_node=missed_per_node / (1 - share))
    return _rescaled(day, changed)


@boundary(arguments.with_decode_speedup)
def with_decode_speedup(day: ServingDay, speedup: float) -> ServingDay:
    """The day with the decode throughput per node multiplied by ``speedup`` (> 0): speculative decoding's
    tokens per verifying step, for instance 1.8 ([V3] 5.4.3), or 1 / 1.8 to take it away. Nodes scale with
    ``nodes_implied``."""
    changed = dataclasses.replace(day, decode_tokens_per_node=day.decode_tokens_per_node * speedup)
    return _rescaled(day, changed)


@boundary(arguments.kv_cache_bytes)
def kv_cache_bytes(kv_lora_rank: int = 512, qk_rope_head_dim: int = 64, fp8: bool = False,
                   tile: int = 128) -> int:
    """Bytes per token per layer of MLA's latent cache (what the absorbed decode reads): BF16, (d_c + d_h^R) x 2
    = 1,152 in V3; FlashMLA's FP8 format, d_c FP8 values, one FP32 scale per ``tile`` of them, and the d_h^R RoPE
    values in BF16: 512 + 4 x 4 + 64 x 2 = 656. Raises TypeError / ValueError for sizes that are not ints >= 1
    or a tile that does not divide kv_lora_rank."""
    if fp8:
        return kv_lora_rank + 4 * (kv_lora_rank // tile) + 2 * qk_rope_head_dim
    return 2 * (kv_lora_rank + qk_rope_head_dim)


@boundary(arguments.tokens_cached)
def tokens_cached(memory_bytes: float, bytes_per_token_per_layer: int, n_layers: int = 61) -> int:
    """How many tokens of context fit in ``memory_bytes`` of KV cache, every layer cached (61 in V3)."""
    return int(memory_bytes // (bytes_per_token_per_layer * n_layers))
