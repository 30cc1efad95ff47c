"""Checker for notebook 10: per-tile (1 x 128) FP8 quantisation and its inverse ([V3] 3.3.2).

The learner writes ``quantize_per_tile(x) -> (x_fp8, scales)`` and ``dequantize_per_tile(x_fp8, scales) -> x``
for x float32 [tokens, channels] with channels a multiple of 128: one scale per token and 128 channels,
s = max(max |x over the tile|, floor) / 448, x_fp8 = clamp(x / s, -448, 448) in E4M3, and back x ~ x_fp8 * s.

One input holds an all-zero tile. Its scale must be finite and positive; any floor up to the released kernels'
1e-4 is accepted (the notebook asks for 1e-4; the 1e-12 of earlier versions is as good: the floor only decides the
scale of a tile with nothing in it, whose codes are 0 either way). A missing floor (scale 0, codes 0 / 0 = NaN)
is named.

The quantiser runs with strict float8 conversions: every value beyond 448 becomes NaN, before any rounding (a
conversion that does not saturate makes NaN of what rounds beyond 448; this one is stricter, so that a missing
clamp shows). torch 2.13's own cast saturates and would hide it. A scale of amax / 448 makes x / s exceed 448 by a
rounding error in about one tile in twelve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from course_lib.precision import formats, quantization
from course_lib.checks.cases import Mistake
from course_lib.checks.comparison import describe_value, format_value
from course_lib.checks.learner import call_learner, expect_inputs_unchanged
from course_lib.checks.verdict import CheckFailed, checker, expect

_MAX = 448.0


class _NonSaturatingCast(TorchFunctionMode):
    """Inside it, converting a float tensor to an FP8 dtype turns every value beyond the format's max into NaN
    (before rounding: stricter than a round-to-nearest conversion without saturation)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        source = args[0] if args else None
        if (isinstance(out, torch.Tensor) and out.dtype in formats.FP8_DTYPES and isinstance(source, torch.Tensor)
                and source.is_floating_point() and source.dtype not in formats.FP8_DTYPES
                and source.shape == out.shape):
            beyond = source.detach().abs() > torch.finfo(out.dtype).max
            if beyond.any():
                out = torch.where(beyond, torch.tensor(float("nan")), out.float()).to(out.dtype)
        return out


def _activations(tokens: int, channels: int, seed: int, outlier_channel: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, channels, generator=generator)
    x = x * 10 ** (2 * torch.rand(tokens, 1, generator=generator) - 1)  # tokens of very different sizes
    if outlier_channel is not None:
        x[:, outlier_channel] *= 100
    return x


def _with_a_zero_tile(x: torch.Tensor, token: int, tile: int) -> torch.Tensor:
    x[token, tile * 128:(tile + 1) * 128] = 0.0
    return x


_CASES = [_with_a_zero_tile(_activations(64, 256, seed=2), token=5, tile=1),
          _activations(8, 384, seed=1, outlier_channel=5), _activations(130, 128, seed=3)]
_FLOOR_SCALE = formats.AMAX_FLOOR / _MAX  # the largest scale accepted for an all-zero tile


def _scales_match(got: Any, x: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether the learner's scales equal the reference's [tokens, channels / 128] (rtol 1e-5), an all-zero tile
    of x [tokens, channels] allowing any scale in (0, 1e-4 / 448] (any positive floor up to the kernels')."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
        return False
    got = got.detach().float()
    zero = _zero_tiles(x)
    floored = (got > 0) & (got <= _FLOOR_SCALE * (1 + 1e-5))
    return bool(torch.isclose(got, expected, rtol=1e-5, atol=0)[~zero].all() and floored[zero].all())


def _zero_tiles(x: torch.Tensor) -> torch.Tensor:
    """bool [tokens, channels / 128]: the 1 x 128 tiles of x that hold only zeros."""
    return x.view(x.shape[0], -1, 128).abs().amax(dim=-1) == 0


def _tiles_along_tokens(x: torch.Tensor) -> torch.Tensor:
    """Scales of 128 x 1 tiles (128 tokens of one channel): [ceil(tokens / 128), channels]."""
    return quantization.quantize(x.t().contiguous(), "tile").scale.t()


def _describe(value: Any) -> str:
    """describe_value, with the items of a short tuple or list described one by one (no tensor repr)."""
    if isinstance(value, (tuple, list)) and len(value) <= 3:
        return f"a {type(value).__name__} of {len(value)} item(s): " + ", ".join(describe_value(v) for v in value)
    return describe_value(value)


def _explain_codes(x_fp8: Any, scales: Any, x: torch.Tensor) -> str | None:
    """What is wrong with the learner's x_fp8 for x [tokens, channels], or None if it is an E4M3 tensor of x's shape."""
    T, C = x.shape
    if not isinstance(x_fp8, torch.Tensor):
        return f"x_fp8 should be a torch.float8_e4m3fn tensor [{T}, {C}], but it is {_describe(x_fp8)}"
    if (isinstance(scales, torch.Tensor) and x_fp8.shape == (T, C // 128) and scales.shape == x.shape):
        return ("you returned (scales, x_fp8): the pair comes the other way round, (x_fp8, scales), x_fp8 first "
                f"[{T}, {C}] and the scales second [{T}, {C // 128}]")
    if x_fp8.shape != x.shape:
        return (f"x_fp8 has shape {list(x_fp8.shape)}, but it should have x's shape [{T}, {C}]: after dividing "
                f"the tiles [tokens, channels / 128, 128] by their scales, view the result back as x.shape")
    if x_fp8.dtype != formats.E4M3:
        return (f"x_fp8 has dtype {str(x_fp8.dtype).replace('torch.', '')}, but it should be float8_e4m3fn (E4M3, "
                f"the format V3 uses for every tensor): convert with .to(torch.float8_e4m3fn)")
    return None


# Scales of the right shape computed the wrong way: Mistake(hint, fn(x, the right scales) -> that mistake's scales).
_SCALE_MISTAKES = [
    Mistake("your scales are 448 / max|x|, the factor that goes INTO FP8; return the one that brings the values "
            "back, s = max|x| / 448, so that x ~ x_fp8 * s", lambda x, scales: 1 / scales),
    Mistake("your scales are max|x| per tile, without the division by 448 (the largest E4M3 value)",
            lambda x, scales: scales * _MAX),
    Mistake("your scales come from the largest x of each tile, not the largest |x|: a tile whose biggest value "
            "is negative gets too small a scale. Take x.abs() before the max",
            lambda x, scales: x.view(x.shape[0], -1, 128).amax(dim=-1) / _MAX),
]


def _explain_scales(got: Any, x: torch.Tensor, expected: torch.Tensor) -> str:
    """What is wrong with the learner's scales, for x [tokens, channels]; expected [tokens, channels / 128]."""
    T, C = x.shape
    shape = f"[{T}, {C // 128}]"
    if not isinstance(got, torch.Tensor):
        return f"your scales are {describe_value(got)}, but a float32 tensor {shape} was expected"
    got = got.detach().float()
    along_tokens = _tiles_along_tokens(x)
    if got.shape == along_tokens.shape and got.shape != expected.shape:
        return (f"your scales have shape {list(got.shape)}: the tiles run along the wrong axis. A tile is ONE token "
                f"and 128 consecutive channels (1 x 128), so the scales are {shape}: reshape x to [tokens, "
                f"channels / 128, 128] and take the max of |x| over the last dimension")
    live = ~_zero_tiles(x)  # [T, C / 128]: an all-zero tile's scale is any floor / 448, checked last

    def close(candidate: torch.Tensor) -> bool:
        return bool(torch.isclose(got, candidate.expand_as(got), rtol=1e-5, atol=0)[live].all())

    global_scale = x.abs().max() / _MAX
    if got.numel() >= 1 and (close(global_scale) if got.shape == expected.shape
                             else torch.allclose(got, global_scale.expand_as(got), rtol=1e-5)):
        return (f"every scale is {format_value(float(global_scale))} = max|x| / 448 over the WHOLE tensor: that is "
                f"per-tensor scaling, where one outlier sets the scale for everything. Take the max over each 1 x 128 "
                f"tile: one scale per token and 128 channels, shape {shape}")
    if got.shape == (T, C // 128, 1):
        return f"your scales have shape {list(got.shape)}: drop the last dimension (keepdim=False), shape {shape}"
    if got.shape != expected.shape:
        return f"your scales have shape {list(got.shape)}, but {shape} was expected (one per token and 128 channels)"
    if (torch.isnan(got) & live).any():
        return (f"your scales contain NaN (for instance at token {int((torch.isnan(got) & live).nonzero()[0, 0])}); "
                f"they should be max |x| over each tile divided by 448, finite and > 0")
    for mistake in _SCALE_MISTAKES:
        if close(mistake.fn(x, expected)):
            return mistake.hint
    wrong = ~torch.isclose(got, expected, rtol=1e-5, atol=0) & live
    if wrong.any():
        row = int(wrong.nonzero()[0, 0])
        return (f"for token {row} your scales are {format_value(got[row])}, but they should be "
                f"{format_value(expected[row])} (max |x| over each tile of 128 channels, divided by 448)")
    t, j = (int(i) for i in (~live).nonzero()[0])
    if not (got[t, j] > 0 and torch.isfinite(got[t, j])):
        return (f"token {t}'s tile {j} holds only zeros, and your scale for it is {format_value(float(got[t, j]))}: "
                f"0 / 448 = 0 and the codes become 0 / 0 = NaN. Floor the max before dividing by 448, "
                f"amax.clamp(min=1e-4) as DeepSeek's kernels do, so that an empty tile gets a positive scale")
    return (f"token {t}'s tile {j} holds only zeros, and your scale for it is {format_value(float(got[t, j]))}: "
            f"floor the max at 1e-4 (DeepSeek's kernels) or less, which gives at most "
            f"{format_value(_FLOOR_SCALE)}, not more")


# Ways back from FP8 that are wrong: Mistake(hint, fn(x_fp8 as float32, scales) -> that mistake's x).
_DEQUANTIZE_MISTAKES = [
    Mistake("returned the FP8 values without the scales: multiply by them, x ~ x_fp8.float() * s, each scale "
            "repeated over its 128 channels.", lambda codes, scales: codes),
    Mistake("spreads the scales with .repeat(1, 128), which gives s0, s1, s0, s1, ...: channel c needs the scale of "
            "tile c // 128, s0 128 times then s1 128 times, which is scales.repeat_interleave(128, dim=1).",
            lambda codes, scales: codes * scales.repeat(1, 128)),
    Mistake("divides by the scales: with s = max|x| / 448, the way back multiplies, x ~ x_fp8.float() * s (each "
            "scale repeated over its 128 channels).", lambda codes, scales: codes / scales.repeat_interleave(128, 1)),
]


def _explain_dequantized(back: Any, reference: formats.Quantized, expected: torch.Tensor) -> str:
    """What is wrong with a learner's dequantize_per_tile output ``back`` that differs from ``expected``
    [tokens, channels]: its kind, NaN, or the mistake of the catalogue it matches."""
    T, C = expected.shape
    start = f"For x_fp8 [{T}, {C}] and scales [{T}, {C // 128}] your dequantize_per_tile"
    generic = (f"{start} returned {_describe(back)}; expected float32 [{T}, {C}] = x_fp8.float() * s, each scale "
               f"repeated over its 128 channels (e.g. scales.repeat_interleave(128, dim=1)).")
    if not (isinstance(back, torch.Tensor) and back.shape == expected.shape and back.is_floating_point()):
        return generic
    back = back.detach().float()
    if torch.isnan(back).any():
        return f"{start} returned NaN values; x_fp8.float() * s has none (the scales are finite)."
    for mistake in _DEQUANTIZE_MISTAKES:
        if torch.allclose(back, mistake.fn(reference.data.float(), reference.scale), rtol=1e-5):
            return f"{start} {mistake.hint}"
    return generic


@checker("quantize_per_tile")
def _check(quantize_fn: Callable[..., Any], dequantize_fn: Callable[..., Any]) -> str:
    for x in _CASES:
        T, C = x.shape
        label = f"(x of shape [{T}, {C}])"
        reference = quantization.quantize(x, "tile")
        given = x.clone()
        with _NonSaturatingCast():
            result = call_learner(quantize_fn, given, name="Your quantize_per_tile", label=label)
        expect_inputs_unchanged([x], [given], "quantize_per_tile", names=["x"])
        expect(isinstance(result, (tuple, list)) and len(result) == 2,
               f"quantize_per_tile{label} should return a pair (x_fp8, scales), but it returned "
               f"{_describe(result)}")
        x_fp8, scales = result
        problem = _explain_codes(x_fp8, scales, x)
        expect(problem is None, f"For x of shape [{T}, {C}]: {problem}.")
        codes = x_fp8.float()
        if _scales_match(scales, x, reference.scale) and torch.isnan(codes).any():
            raise CheckFailed(
                f"For x of shape [{T}, {C}] some of your FP8 values are NaN.\nLikely cause: no clamp to 448. "
                f"x / s can come out a rounding error above 448 (448.00003) at a tile's largest value, and further "
                f"with a scale that is not exactly max|x| / 448. torch 2.13's cast saturates; this checker converts "
                f"strictly, every value above 448 becoming NaN (E4M3 has no infinity), as a conversion without "
                f"saturation does beyond the format's range. Clamp x / s to [-448, 448] before "
                f".to(torch.float8_e4m3fn).")
        if not _scales_match(scales, x, reference.scale):
            raise CheckFailed(f"For x of shape [{T}, {C}]: {_explain_scales(scales, x, reference.scale)}.")
        scaled = x / reference.scale.repeat_interleave(128, 1)  # what x_fp8 rounds, in units of the scale
        bound = scaled.abs() / 16 + 2.0 ** -10 + 1e-6  # half an E4M3 step: 2^-4 relative, 2^-10 among subnormals
        wrong = ~((codes - scaled).abs() <= bound)
        if wrong.any():
            t, c = (int(i) for i in wrong.nonzero()[0])
            raise CheckFailed(
                f"For x of shape [{T}, {C}], token {t}, channel {c}: x = {float(x[t, c]):.6g} and its tile's scale is "
                f"{float(reference.scale[t, c // 128]):.6g}, so x_fp8 should be x / s = {float(scaled[t, c]):.6g} "
                f"rounded to E4M3 ({float(reference.data[t, c].float()):.6g}), but yours is {float(codes[t, c]):.6g}. "
                f"Divide each element by its own tile's scale.")
        given_codes, given_scales = reference.data.clone(), reference.scale.clone()
        back = call_learner(dequantize_fn, given_codes, given_scales,
                            name="Your dequantize_per_tile", label=f"(x_fp8 [{T}, {C}], scales [{T}, {C // 128}])")
        expect_inputs_unchanged([reference.data, reference.scale], [given_codes, given_scales], "dequantize_per_tile",
                                names=["x_fp8", "scales"])
        expected = reference.dequantize()
        right = (isinstance(back, torch.Tensor) and back.shape == expected.shape and back.is_floating_point()
                 and torch.allclose(back.float(), expected, rtol=1e-5, atol=0))
        if not right:
            raise CheckFailed(_explain_dequantized(back, reference, expected))
    return (f"it agrees with quantization.quantize(x, 'tile') on {len(_CASES)} inputs, one with a 100x outlier channel and "
            f"one with an all-zero tile")


def check_quantize_per_tile(quantize_fn: Callable[..., Any], dequantize_fn: Callable[..., Any]) -> None:
    """Check ``quantize_fn(x) -> (x_fp8, scales)`` and ``dequantize_fn(x_fp8, scales) -> x`` for per-tile
    (1 x 128) E4M3 quantisation of x float32 [tokens, channels] ([V3] 3.3.2; reference ``quantization.quantize(x, "tile")``).
    Names the scale taken from the whole tensor, tiles along the wrong axis, a missing floor on the max (an
    all-zero tile; any floor up to 1e-4 passes), a missing clamp to 448, and dividing instead of multiplying on the
    way back."""
    return _check(quantize_fn, dequantize_fn)
