"""Forward + backward time of DeepSeekMoE against a dense SwiGLU FFN with the same activated parameters and
against Hugging Face transformers' DeepseekV3MoE on the same configuration and weights, on the CPU, 2 threads.

    .venv/bin/python benchmarks/bench_moe.py

Configuration (issue 3): dim 256, expert_dim 128, 16 routed experts, top-2, 1 shared expert, 8 x 256 tokens.
The dense FFN has hidden (1 shared + 2 routed) * 128 = 384: the FFN parameters one token activates in the MoE
layer (the MoE layer also runs its router). The layers are timed in turns, round after round, so that a load
spike from another process hits all of them alike; the table shows the median and the best round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_lib.layers import SwiGLU
from course_lib.moe import DeepSeekMoE

DIM, EXPERT_DIM, N_ROUTED, TOP_K, N_SHARED = 256, 128, 16, 2, 1
BATCH, SEQ = 8, 256
WARMUP, ROUNDS = 3, 20


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward of ``module`` on ``x``."""
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    module(x).square().mean().backward()
    return time.perf_counter() - start


def hf_moe_like(moe: DeepSeekMoE, experts_implementation: str) -> torch.nn.Module | None:
    """transformers' DeepseekV3MoE with the weights of ``moe``; None when transformers is not installed."""
    try:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    except ImportError:
        return None
    config = DeepseekV3Config(hidden_size=DIM, moe_intermediate_size=EXPERT_DIM, n_routed_experts=N_ROUTED,
                              num_experts_per_tok=TOP_K, n_shared_experts=N_SHARED, n_group=1, topk_group=1,
                              routed_scaling_factor=moe.route_scale, norm_topk_prob=True)
    config._experts_implementation = experts_implementation
    hf = DeepseekV3MoE(config)
    with torch.no_grad():
        hf.gate.weight.copy_(moe.centroids)
        hf.gate.e_score_correction_bias.copy_(moe.bias)
        hf.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_up], dim=1))
        hf.experts.down_proj.copy_(moe.w_down)
        hf.shared_experts.gate_proj.weight.copy_(moe.shared.w_gate.weight)
        hf.shared_experts.up_proj.weight.copy_(moe.shared.w_up.weight)
        hf.shared_experts.down_proj.weight.copy_(moe.shared.w_down.weight)
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description="Time DeepSeekMoE against a dense FFN and transformers.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as in the issue)")
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, SEQ, DIM)
    moe = DeepSeekMoE(DIM, EXPERT_DIM, N_ROUTED, N_SHARED, TOP_K)
    layers = {f"dense SwiGLU (hidden {(N_SHARED + TOP_K) * EXPERT_DIM})": SwiGLU(DIM, (N_SHARED + TOP_K) * EXPERT_DIM),
              "course_lib DeepSeekMoE": moe}
    for implementation in ("eager", "grouped_mm"):  # "batched_mm" expands the weights per token: far slower on a CPU
        hf = hf_moe_like(moe, implementation)
        if hf is None:
            break
        try:
            torch.testing.assert_close(hf(x), moe(x), rtol=1e-4, atol=1e-5)
            forward_backward(hf, x)
        except Exception as exc:  # an implementation this torch build cannot run on the CPU
            print(f"(transformers experts_implementation={implementation!r} skipped: {type(exc).__name__})")
            continue
        layers[f"transformers DeepseekV3MoE ({implementation})"] = hf

    for module in layers.values():
        for _ in range(WARMUP):
            forward_backward(module, x)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(ROUNDS):
        for name, module in layers.items():
            times[name].append(forward_backward(module, x))

    print(f"forward + backward of {BATCH} x {SEQ} tokens, dim {DIM}, {N_ROUTED} experts of {EXPERT_DIM}, "
          f"top-{TOP_K}, {N_SHARED} shared; CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{ROUNDS} rounds")
    dense_name = next(iter(layers))
    dense_median, dense_best = statistics.median(times[dense_name]), min(times[dense_name])
    print(f"{'layer':<44} {'median ms':>10} {'best ms':>8} {'x dense (median)':>17} {'x dense (best)':>15}")
    for name, seconds in times.items():
        median, best = statistics.median(seconds), min(seconds)
        print(f"{name:<44} {median * 1e3:>10.1f} {best * 1e3:>8.1f} {median / dense_median:>17.2f} "
              f"{best / dense_best:>15.2f}")


if __name__ == "__main__":
    main()
