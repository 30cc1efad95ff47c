"""Forward + backward time of the DeepSeekMoE layer against Hugging Face transformers' DeepseekV3MoE on the same
configuration and weights, with transformers' grouped-GEMM experts and its default loop over experts, at 1 and 2
threads, in one run.

    .venv/bin/python benchmarks/bench_moe_vs_hf.py            # --threads 1 2 --rounds 20 by default

Configuration: benchmarks/moe_layer.py (dim 256, 16 experts of 128, top-2, 1 shared, 8 x 256 tokens); the HF
layer is built by ``tests/hf_reference.py``'s ``hf_moe_like`` (the one the cross-check tests use), and its output is
checked equal to ours before timing. ("batched_mm" is left out: it copies the weights per token, far slower on a
CPU.) Figure: course_lib / transformers grouped_mm at 2 threads, goal at most 0.8x.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the Hugging Face reference of the tests
from hf_reference import hf_moe_like  # noqa: E402

import moe_layer
import timing


def main(argv: list[str] | None = None) -> None:
    args = timing.parse(timing.parser(__doc__.split("\n\n")[0]), argv)
    rounds = args.rounds
    moe, _, x = moe_layer.layers(args.quick)
    candidates = {"course_lib DeepSeekMoE": lambda: moe_layer.forward_backward(moe, x)}
    for implementation in ("grouped_mm", "eager"):
        hf = hf_moe_like(moe, implementation)
        with torch.no_grad():
            torch.testing.assert_close(hf(x), moe(x), rtol=1e-4, atol=1e-5)
        candidates[f"transformers DeepseekV3MoE ({implementation})"] = (
            lambda hf=hf: moe_layer.forward_backward(hf, x))
    timing.header(moe_layer.describe(x))
    timing.compare_and_report(args.threads, candidates, rounds, "transformers DeepseekV3MoE (grouped_mm)",
                              "course_lib DeepSeekMoE", "moe_vs_hf_grouped_mm",
                              "course_lib MoE layer / transformers DeepseekV3MoE with grouped_mm", "<= 0.8x at 2 threads")


if __name__ == "__main__":
    main()
