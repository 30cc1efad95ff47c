"""Notebook 10's checker: the reference passes, a stub is reported, and each mistake of per-tile quantisation,
written the way a learner writes it, is rejected with its own hint."""

from functools import partial

import torch

from checking import rejected_with, stub
from course_lib.precision import formats, quantization
from course_lib.checks import check_quantize_per_tile, outcome

E4M3 = torch.float8_e4m3fn


def quantize(x, floor=1e-4):  # the way the notebook's solution writes it
    tiles = x.view(x.shape[0], -1, 128)  # [tokens, channels / 128, 128]
    scales = tiles.abs().amax(dim=-1).clamp(min=floor) / 448  # [tokens, channels / 128]
    x_fp8 = (tiles / scales[..., None]).clamp(-448, 448).to(E4M3)
    return x_fp8.view(x.shape), scales


def dequantize(x_fp8, scales):
    return x_fp8.float() * scales.repeat_interleave(128, dim=1)


def reference_quantize(x):
    q = quantization.quantize(x, "tile")
    return q.data, q.scale


def reference_dequantize(x_fp8, scales):
    return formats.Quantized(x_fp8, scales, (1, 128)).dequantize()


rejected_with = partial(rejected_with, check_quantize_per_tile)


def test_right_answers_pass():
    assert outcome(check_quantize_per_tile, quantize, dequantize) is True
    assert outcome(check_quantize_per_tile, reference_quantize, reference_dequantize) is True


def test_multiplying_by_the_inverse_passes():
    def by_inverse(x):
        tiles = x.reshape(x.shape[0], x.shape[1] // 128, 128)
        amax = tiles.abs().max(dim=2).values.clamp(min=1e-4)
        x_fp8 = torch.clamp(tiles * (448.0 / amax)[:, :, None], -448.0, 448.0).to(E4M3)
        return x_fp8.reshape(x.shape), amax / 448.0
    assert outcome(check_quantize_per_tile, by_inverse, dequantize) is True


def test_any_floor_up_to_the_kernels_is_accepted():
    """The floor decides only the scale of an all-zero tile, whose codes are 0 whatever it is: the notebook's 1e-4
    (the released kernels'), the 1e-12 of earlier versions and 1e-30 all pass."""
    for floor in (1e-4, 1e-12, 1e-30):
        assert outcome(check_quantize_per_tile, lambda x, floor=floor: quantize(x, floor), dequantize) is True


def test_a_missing_or_too_large_floor_is_named():
    def no_floor(x):
        tiles = x.view(x.shape[0], -1, 128)
        scales = tiles.abs().amax(dim=-1) / 448
        return (tiles / scales[..., None]).clamp(-448, 448).to(E4M3).view(x.shape), scales
    rejected_with(no_floor, dequantize, "holds only zeros", "0 / 0 = NaN", "clamp(min=1e-4)")
    rejected_with(lambda x: quantize(x, floor=1e-3), dequantize, "holds only zeros", "at most 2.23214e-07")
    # without the floor and with 1 / 0 = inf: still the floor, not a wrong scale elsewhere
    def inverse_no_floor(x):
        tiles = x.view(x.shape[0], -1, 128)
        inv = 448 / tiles.abs().amax(dim=-1)
        return (tiles * inv[..., None]).clamp(-448, 448).to(E4M3).view(x.shape), 1 / inv
    rejected_with(inverse_no_floor, dequantize, "holds only zeros")


def test_stub_returns_false(capsys):
    assert outcome(check_quantize_per_tile, stub, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_scale_from_the_whole_tensor():
    def whole(x):
        scale = x.abs().max() / 448
        x_fp8 = (x / scale).clamp(-448, 448).to(E4M3)
        return x_fp8, scale.expand(x.shape[0], x.shape[1] // 128)
    rejected_with(whole, dequantize, "WHOLE tensor", "per-tensor")

    def whole_scalar(x):
        scale = x.abs().max() / 448
        return (x / scale).clamp(-448, 448).to(E4M3), scale
    rejected_with(whole_scalar, dequantize, "WHOLE tensor")


def test_tiles_along_the_wrong_axis():
    def per_channel(x):  # 128 tokens x 1 channel
        T, C = x.shape
        padded = torch.nn.functional.pad(x, (0, 0, 0, -T % 128))
        scales = padded.view(-1, 128, C).abs().amax(dim=1) / 448  # [ceil(T / 128), C]
        x_fp8 = (x / scales.repeat_interleave(128, 0)[:T]).clamp(-448, 448).to(E4M3)
        return x_fp8, scales
    rejected_with(per_channel, dequantize, "wrong axis", "1 x 128")


def test_no_clamp():
    def no_clamp(x):
        tiles = x.view(x.shape[0], -1, 128)
        scales = tiles.abs().amax(dim=-1).clamp(min=1e-4) / 448
        return (tiles / scales[..., None]).to(E4M3).view(x.shape), scales
    rejected_with(no_clamp, dequantize, "no clamp to 448")


def test_dividing_on_the_way_back():
    def divide(x_fp8, scales):
        return x_fp8.float() / scales.repeat_interleave(128, dim=1)
    rejected_with(quantize, divide, "divides by the scales", "multiplies")


def test_other_mistakes_are_explained():
    def inverse_scale(x):
        x_fp8, scales = quantize(x)
        return x_fp8, 1 / scales
    rejected_with(inverse_scale, dequantize, "448 / max|x|")

    def no_448(x):
        x_fp8, scales = quantize(x)
        return x_fp8, scales * 448
    rejected_with(no_448, dequantize, "without the division by 448")

    def float_codes(x):
        x_fp8, scales = quantize(x)
        return x_fp8.float(), scales
    rejected_with(float_codes, dequantize, "torch.float8_e4m3fn")

    def crashes(x):
        return x.view(-1, 128, 3)
    rejected_with(crashes, dequantize, "raised RuntimeError")

    def no_repeat(x_fp8, scales):
        return x_fp8.float() * scales[:, :1]
    rejected_with(quantize, no_repeat, "repeated over its 128 channels")


def test_dividing_the_input_in_place_is_named():
    def in_place(x):
        tiles = x.view(x.shape[0], -1, 128)
        scales = tiles.abs().amax(dim=-1).clamp(min=1e-12) / 448
        tiles /= scales[..., None]  # writes into x through the view
        return tiles.clamp(-448, 448).to(E4M3).view(x.shape), scales
    rejected_with(in_place, dequantize, "changed its input x in place")


def test_scaling_the_scales_in_place_is_named():
    def in_place(x_fp8, scales):
        scales *= 1.0  # harmless on its own
        scales.mul_(2)
        return x_fp8.float() * (scales / 2).repeat_interleave(128, dim=1)
    rejected_with(quantize, in_place, "changed its input scales in place")


def test_max_without_abs_is_named():
    def signed(x):
        tiles = x.view(x.shape[0], -1, 128)
        scales = tiles.amax(dim=-1).clamp(min=1e-12) / 448
        return (tiles / scales[..., None]).clamp(-448, 448).to(E4M3).view(x.shape), scales
    rejected_with(signed, dequantize, "not the largest |x|")


def test_swapped_pair_wrong_shape_and_wrong_dtype_are_told_apart():
    rejected_with(lambda x: quantize(x)[::-1], dequantize, "the other way round")
    rejected_with(lambda x: (quantize(x)[0].view(x.shape[0], -1, 128), quantize(x)[1]), dequantize,
                  "has shape [64, 2, 128]", "view the result back")
    rejected_with(lambda x: (quantize(x)[0].float(), quantize(x)[1]), dequantize, "dtype float32",
                  ".to(torch.float8_e4m3fn)")


def test_dequantize_mistakes_are_named():
    rejected_with(quantize, lambda q, s: q.float() * s.repeat(1, 128), "repeat_interleave", "s0, s1, s0")
    rejected_with(quantize, lambda q, s: q.float(), "without the scales")
    rejected_with(quantize, lambda q, s: q.float() * s.repeat_interleave(128, 1) * float("nan"), "NaN")
    message = rejected_with(quantize, lambda q, s: (q.float() * s.repeat_interleave(128, 1),), "tuple of 1 item")
    assert len(message) < 400, message  # no tensor repr


def test_nan_scales_are_named():
    def nan_scales(x):
        tiles = x.view(x.shape[0], -1, 128)
        scales = tiles.abs().amax(dim=-1) / 448 * float("nan")
        return (tiles / scales[..., None]).to(E4M3).view(x.shape), scales
    rejected_with(nan_scales, dequantize, "scales contain NaN")
