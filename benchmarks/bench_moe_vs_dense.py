"""Forward + backward time of the DeepSeekMoE layer against a dense SwiGLU FFN with the same activated parameters,
with each dispatch (grouped GEMMs and the expert loop), at 1 and 2 threads, in one run.

    .venv/bin/python benchmarks/bench_moe_vs_dense.py            # --threads 1 2 --rounds 20 by default

Configuration: benchmarks/moe_layer.py (dim 256, 16 experts of 128, top-2, 1 shared, 8 x 256 tokens).
Figure: MoE layer / dense FFN at 2 threads, goal at most 1.25x (the same multiply-adds in more, smaller GEMMs
plus the router and the gather/scatter; 1.0x is the limit).
"""

from __future__ import annotations

from course_lib.moe import dispatch
from course_lib.moe.layer import DeepSeekMoE

import moe_layer
import timing


def with_dispatch(moe: DeepSeekMoE, implementation: str):
    """A forward + backward of ``moe`` with its routed experts run by ``implementation``."""
    def run(x):
        original = moe.routed_experts
        moe.routed_experts = lambda *args: dispatch.routed_experts(*args[:3], moe.w_gate, moe.w_up, moe.w_down,
                                                                   args[3], implementation)
        try:
            moe_layer.forward_backward(moe, x)
        finally:
            moe.routed_experts = original
    return run


def main(argv: list[str] | None = None) -> None:
    args = timing.parse(timing.parser(__doc__.split("\n\n")[0]), argv)
    rounds = args.rounds
    moe, dense, x = moe_layer.layers(args.quick)
    candidates = {"dense SwiGLU": lambda: moe_layer.forward_backward(dense, x),
                  "DeepSeekMoE (auto)": lambda: moe_layer.forward_backward(moe, x)}
    if dispatch.grouped_mm_available(x.reshape(-1, moe.dim), moe.w_gate, moe.w_down):
        candidates["DeepSeekMoE, grouped GEMMs"] = lambda: with_dispatch(moe, "grouped_mm")(x)
    candidates["DeepSeekMoE, expert loop"] = lambda: with_dispatch(moe, "loop")(x)
    timing.header(moe_layer.describe(x))
    timing.compare_and_report(args.threads, candidates, rounds, "dense SwiGLU", "DeepSeekMoE (auto)", "moe_vs_dense",
                              "MoE layer / dense FFN with the activated parameters", "<= 1.25x at 2 threads")


if __name__ == "__main__":
    main()
