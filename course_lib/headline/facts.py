"""The published numbers the course cites, each with its source.

[V3]: DeepSeek-V3 Technical Report, arXiv 2412.19437. Hardware peaks: NVIDIA's data sheets (dense, without
sparsity). The blog post's table is quoted from the seed text of the course (docs/BLOG_POST.md) to be examined,
not trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

# [V3] Table 1: training costs of DeepSeek-V3, in H800 GPU-hours, by stage.
V3_GPU_HOURS = {
    "pre-training": 2_664_000,
    "context extension": 119_000,
    "post-training": 5_000,
}
V3_ASSUMED_PRICE_PER_GPU_HOUR = 2.0  # US$, the report's assumption for renting an H800
V3_TRAINING_TOKENS = 14.8e12  # [V3] 4.1: pre-training corpus
V3_GPU_HOURS_PER_TRILLION_TOKENS = 180_000  # [V3] 1
V3_CLUSTER_GPUS = 2048  # [V3] 3.1: 2048 H800 GPUs
V3_TOTAL_PARAMS = 671e9  # [V3] abstract: main model, without the 14B of the MTP module
V3_ACTIVATED_PARAMS = 37e9  # [V3] abstract: activated for each token

# Peak dense throughput per GPU, FLOP/s (NVIDIA data sheets; the H800 is the export version of the H100 SXM:
# same compute, NVLink cut to 400 GB/s).
PEAK_FLOPS = {
    "A100 BF16": 312e12,
    "H100/H800 BF16": 989e12,
    "H100/H800 FP8": 1979e12,
}


@dataclass(frozen=True)
class BlogRow:
    """One column of the blog post's "Key Features Comparison" table, as the blog states it."""

    model: str
    development_cost_usd: float
    training_tokens: float
    total_params: float
    activated_params: float
    gpu_hours: float


# docs/BLOG_POST.md: "Key Features Comparison" (names as the blog spells them).
BLOG_TABLE = (
    BlogRow("DeepSeek V3", 5.6e6, 14.8e12, 671e9, 37e9, 2.788e6),
    BlogRow("DeepAI GPT-4", 5e9, 10e12, 175e9, 175e9, 5e6),
    BlogRow("Google Gemini", 4e9, 12e12, 540e9, 540e9, 4.5e6),
    BlogRow("AnthAI Claude", 3.5e9, 11e12, 400e9, 400e9, 4e6),
)
