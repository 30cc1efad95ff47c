"""Checkers for notebook 00 (the headline numbers): parameter counts of an MoE layer, GPU utilisation."""

from __future__ import annotations

from course_lib.headline import compute, param_count
from course_lib.checks.cases import Case, Mistake
from course_lib.checks.function import check_function

# --------------------------------------------------------------------------------------------- moe_ffn_params


def _expert(dim: int, expert_dim: int) -> int:
    return 3 * dim * expert_dim


_MOE_CASES = [
    Case((4, 8, 6, 1, 2), label="dim=4, expert_dim=8, n_routed=6, n_shared=1, top_k=2"),
    Case((16, 32, 8, 2, 3), label="dim=16, expert_dim=32, n_routed=8, n_shared=2, top_k=3"),
    Case((7168, 2048, 256, 1, 8), label="DeepSeek-V3's MoE layer: dim=7168, expert_dim=2048, n_routed=256, n_shared=1, top_k=8"),
    Case((64, 16, 10, 0, 1), label="dim=64, expert_dim=16, n_routed=10, n_shared=0, top_k=1"),
]

_MOE_MISTAKES = [
    Mistake("two matrices per expert. A SwiGLU expert has THREE: W_gate and W_up (expert_dim x dim each) and "
            "W_down (dim x expert_dim), so 3 * dim * expert_dim parameters.",
            lambda d, h, n, s, k: ((n + s) * 2 * d * h + n * d, (k + s) * 2 * d * h + n * d)),
    Mistake("the router is missing. Its centroids (n_routed x dim) are parameters too, and every token uses all "
            "of them to compute its affinity scores, so they count in both numbers.",
            lambda d, h, n, s, k: ((n + s) * _expert(d, h), (k + s) * _expert(d, h))),
    Mistake("the shared experts are missing from the activated count. Every token goes through the shared "
            "experts, in addition to its top_k routed ones.",
            lambda d, h, n, s, k: ((n + s) * _expert(d, h) + n * d, k * _expert(d, h) + n * d)),
    Mistake("the shared experts are missing from both counts. They are experts of the layer too, and every "
            "token uses them.",
            lambda d, h, n, s, k: (n * _expert(d, h) + n * d, k * _expert(d, h) + n * d)),
    Mistake("the router is counted in the total but not in the activated count. Every token computes its "
            "scores against all n_routed centroids, so the router is activated by every token.",
            lambda d, h, n, s, k: ((n + s) * _expert(d, h) + n * d, (k + s) * _expert(d, h))),
    Mistake("the two numbers are swapped: return (total, activated), total first.",
            lambda d, h, n, s, k: ((k + s) * _expert(d, h) + n * d, (n + s) * _expert(d, h) + n * d)),
    Mistake("the activated count equals the total. A token runs through only top_k of the n_routed experts "
            "(plus the shared ones): that is the point of a mixture of experts.",
            lambda d, h, n, s, k: ((n + s) * _expert(d, h) + n * d,) * 2),
]


def check_moe_ffn_params(fn) -> None:
    """Check ``fn(dim, expert_dim, n_routed, n_shared, top_k) -> (total, activated)`` for one MoE layer's FFN."""
    return check_function(
        fn, name="moe_ffn_params", reference=param_count.moe_ffn_params, cases=_MOE_CASES, mistakes=_MOE_MISTAKES,
        generic_hint="count one expert (3 matrices), then how many experts exist and how many a token uses; "
                     "add the router's centroids to both.",
    )


# --------------------------------------------------------------------------------------------- gpu_utilisation
def _utilisation_with(flops_per_param_token: float, seconds_per_hour: float = 3600, scale: float = 1.0):
    def wrong(params: float, tokens: float, hours: float, peak: float) -> float:
        return scale * flops_per_param_token * params * tokens / (hours * seconds_per_hour * peak)
    return wrong


_UTIL_CASES = [
    Case((1e9, 1e10, 500.0, 1e14), label="activated_params=1e9, tokens=1e10, gpu_hours=500, peak_flops=1e14"),
    Case((37e9, 14.8e12, 2.664e6, 989e12),
         label="DeepSeek-V3's pre-training: 37e9 activated, 14.8e12 tokens, 2.664e6 H800-hours, peak 989e12 FLOP/s"),
    Case((7e9, 2e12, 1.2e5, 312e12), label="activated_params=7e9, tokens=2e12, gpu_hours=1.2e5, peak_flops=312e12"),
]

_UTIL_MISTAKES = [
    Mistake("you count 2 FLOPs per parameter and token: that is the forward pass only. Training also runs the "
            "backward pass (about twice the forward), so the rule is 6 x parameters x tokens.",
            _utilisation_with(2)),
    Mistake("you count 4 FLOPs per parameter and token. Forward (2) plus backward (4) makes 6.",
            _utilisation_with(4)),
    Mistake("the GPU-hours are not converted to seconds. Peak throughput is in FLOP per SECOND, so multiply the "
            "hours by 3600.", _utilisation_with(6, seconds_per_hour=1)),
    Mistake("the result is a percentage. Return a fraction (0.35, not 35); format it as a percentage when you "
            "print it.", _utilisation_with(6, scale=100)),
    Mistake("the result is upside down: it is peak over achieved. Utilisation = achieved FLOP/s / peak FLOP/s, "
            "a number below 1.", lambda p, t, h, f: h * 3600 * f / (6 * p * t)),
]


def check_gpu_utilisation(fn) -> None:
    """Check ``fn(activated_params, tokens, gpu_hours, peak_flops) -> utilisation`` (a fraction)."""
    return check_function(
        fn, name="gpu_utilisation", reference=compute.gpu_utilisation, cases=_UTIL_CASES, mistakes=_UTIL_MISTAKES,
        generic_hint="utilisation = (6 x activated_params x tokens) / (gpu_hours x 3600 x peak_flops).",
    )
