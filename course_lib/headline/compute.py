"""Training compute, GPU utilisation and cost: the arithmetic behind the headline numbers (notebook 00).

The rule of thumb: training a Transformer costs about 6 floating-point operations per parameter and token
(2 in the forward pass, 4 in the backward pass). For a mixture-of-experts model the parameters that count are
the ACTIVATED ones: each token only goes through its chosen experts. The rule leaves out attention's
sequence-length term, so the utilisation it implies is a slight underestimate.
"""

from __future__ import annotations

from collections.abc import Mapping

from course_lib.core.validation import check_number

FLOPS_PER_PARAM_PER_TOKEN = 6  # forward 2 + backward 4
SECONDS_PER_HOUR = 3600


def _positive(name: str, value: float) -> float:
    return float(check_number(name, value, 0, strict=True))


def training_flops(activated_params: float, tokens: float) -> float:
    """Training compute in FLOPs: 6 x activated parameters x training tokens."""
    return FLOPS_PER_PARAM_PER_TOKEN * _positive("activated_params", activated_params) * _positive("tokens", tokens)


def achieved_flops_per_gpu(activated_params: float, tokens: float, gpu_hours: float) -> float:
    """The sustained throughput, FLOP/s per GPU, that a training run of this size in this many GPU-hours implies."""
    return training_flops(activated_params, tokens) / (_positive("gpu_hours", gpu_hours) * SECONDS_PER_HOUR)


def gpu_utilisation(activated_params: float, tokens: float, gpu_hours: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per GPU over the GPU's peak FLOP/s, as a fraction (0.35, not 35)."""
    return achieved_flops_per_gpu(activated_params, tokens, gpu_hours) / _positive("peak_flops", peak_flops)


def training_cost(gpu_hours: float | Mapping[str, float], price_per_gpu_hour: float) -> float:
    """Rental cost in dollars of some GPU-hours (a number, or a mapping stage -> GPU-hours) at a price per hour."""
    if isinstance(gpu_hours, Mapping):
        hours = sum(_positive(f"gpu_hours[{stage!r}]", value) for stage, value in gpu_hours.items())
    else:
        hours = gpu_hours
    return _positive("gpu_hours", hours) * _positive("price_per_gpu_hour", price_per_gpu_hour)
