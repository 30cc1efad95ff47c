"""FP8 with fine-grained scaling: quantisation against a slow per-tile loop and within the formats' rounding
bounds, the FP8 GEMM against its dequantised reference, the FP8 linear layer's gradients against float64, the
accumulation model against a scalar loop, the model conversion, and bad input."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.core.validation import NonFiniteError, boundary
from course_lib.precision import accumulation, formats, linear, quantization
from course_lib.precision.formats import E4M3, E5M2
from course_lib.model.tiny import TinyDeepSeek
from tiny_models import tiny_config

MANTISSA_BITS = {E4M3: 3, E5M2: 2}
SMALLEST_SUBNORMAL = {E4M3: 2.0 ** -9, E5M2: 2.0 ** -16}


def activations(rows, cols, seed=0, outliers=True):
    """Per-token magnitudes over two decades, and a few channels 100x larger when ``outliers``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 10 ** (2 * torch.rand(rows, 1, generator=g) - 1)
    if outliers:
        x[:, torch.randperm(cols, generator=g)[:max(1, cols // 64)]] *= 100
    return x


# ------------------------------------------------------------------------------------------ formats
def test_grids():
    e4m3, e5m2 = quantization.fp8_grid(E4M3), quantization.fp8_grid(E5M2)
    assert e4m3[0] == 0 and e4m3[-1] == 448 and len(e4m3) == 127  # 0x00..0x7e; 0x7f is NaN
    assert e5m2[0] == 0 and e5m2[-1] == 57344 and len(e5m2) == 124  # exponent 31 holds inf and NaN
    assert e4m3[1] == 2.0 ** -9 and e5m2[1] == 2.0 ** -16
    assert (e4m3.diff() > 0).all() and quantization.fp8_max(E4M3) == 448 and quantization.fp8_max(E5M2) == 57344


# ------------------------------------------------------------------------------------------ quantisation
def slow_power_of_two(scale: float) -> float:
    """The smallest power of two >= scale, by doubling and halving."""
    power = 1.0
    while power < scale:
        power *= 2
    while power / 2 >= scale:
        power /= 2
    return power


def slow_quantize(x, tile, dtype, scale_format="float"):
    """One tile at a time: s = max(max |x|, 1e-4) / fp8_max (rounded up to a power of two for "ue8m0"),
    q = (x / s).to(dtype)."""
    rows, cols = x.shape
    data = torch.empty(rows, cols, dtype=dtype)
    scales = torch.empty(math.ceil(rows / tile[0]), math.ceil(cols / tile[1]))
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            block = x[i * tile[0]:(i + 1) * tile[0], j * tile[1]:(j + 1) * tile[1]]
            amax = torch.tensor(max(float(block.abs().max()), 1e-4), dtype=torch.float32)
            scale = float(amax / quantization.fp8_max(dtype))  # divided in float32, as the kernels do
            if scale_format == "ue8m0":
                scale = slow_power_of_two(scale)
            scales[i, j] = scale
            data[i * tile[0]:(i + 1) * tile[0], j * tile[1]:(j + 1) * tile[1]] = (
                block / torch.tensor(scale, dtype=torch.float32)).to(dtype)
    return data, scales


@pytest.mark.parametrize("granularity", formats.GRANULARITIES)
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("shape", [(1, 1), (3, 130), (129, 257), (256, 128), (200, 5)])
@pytest.mark.parametrize("scale_format", formats.SCALE_FORMATS)
def test_quantize_matches_loop(granularity, dtype, shape, scale_format):
    x = activations(*shape, seed=sum(shape))
    x[0, 0] = 0.0 if shape[1] == 5 else x[0, 0]  # (200, 5): the first tile keeps four values
    x[-1, :] = 3e-5 if shape[0] > 1 else x[-1, :]  # a token below the amax floor
    q = quantization.quantize(x, granularity, dtype, scale_format)
    data, scales = slow_quantize(x, quantization.tile_shape(granularity, shape), dtype, scale_format)
    assert q.data.dtype == dtype and q.data.shape == x.shape and q.scale.dtype == torch.float32
    torch.testing.assert_close(q.scale, scales, rtol=0, atol=0)
    assert torch.equal(q.data.view(torch.uint8), data.view(torch.uint8))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 300), granularity=st.sampled_from(formats.GRANULARITIES),
       dtype=st.sampled_from([E4M3, E5M2]), seed=st.integers(0, 10**6))
def test_round_trip_within_the_format_bound(rows, cols, granularity, dtype, seed):
    """|x - deq| <= 2^-(m+1) |x| (half an ulp) + half the smallest subnormal times the tile's scale."""
    x = activations(rows, cols, seed)
    q = quantization.quantize(x, granularity, dtype)
    deq = q.dequantize()
    tile = quantization.tile_shape(granularity, (rows, cols))
    scale = q.scale.repeat_interleave(tile[0], 0)[:rows].repeat_interleave(tile[1], 1)[:, :cols]
    bound = 2.0 ** -(MANTISSA_BITS[dtype] + 1) * x.abs() + SMALLEST_SUBNORMAL[dtype] / 2 * scale
    assert ((deq - x).abs() <= bound * (1 + 1e-6)).all()
    # each tile's largest magnitude lands on +-fp8_max exactly, so it comes back exactly (up to float32)
    assert q.data.float().abs().max() == quantization.fp8_max(dtype)


def test_all_zero_tiles_stay_zero_with_a_finite_scale():
    x = torch.zeros(4, 300)
    x[1, 200] = 3.0
    q = quantization.quantize(x, "tile")
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert torch.equal(q.dequantize(), x)


@pytest.mark.parametrize("scale_format, expected", [("float", 1e-4 / 448), ("ue8m0", 2.0 ** -22)])
def test_the_amax_floor_is_the_released_kernels(scale_format, expected):
    """act_quant floors amax at 1e-4: an all-zero tile (and one of tiny values) gets the scale 1e-4 / 448, which
    ue8m0 rounds up to 2^ceil(log2(2.23e-7)) = 2^-22; the codes stay finite."""
    x = torch.zeros(3, 256)
    x[1, :128] = 5e-5  # below the floor: 5e-5 / (1e-4 / 448) = 224
    x[2, 128:] = 1.0
    q = quantization.quantize(x, "tile", scale_format=scale_format)
    assert formats.AMAX_FLOOR == 1e-4
    assert q.scale[0, 0].item() == pytest.approx(expected, rel=1e-6) and q.scale[1, 0] == q.scale[0, 0]
    assert not torch.isnan(q.data.float()).any() and torch.equal(q.data[0].float(), torch.zeros(256))
    assert q.data[1, 0].float().item() == pytest.approx(5e-5 / expected, rel=2.0 ** -4)


@pytest.mark.parametrize("amax, scale", [(300.0, 1.0), (448.0, 1.0), (449.0, 2.0), (0.5, 2.0 ** -9),
                                          (448.0 * 2.0 ** -7, 2.0 ** -7), (1e-6, 2.0 ** -22)])
def test_ue8m0_rounds_the_scale_up_to_a_power_of_two(amax, scale):
    """The facts file's examples: amax 300 -> 1.0, 448 -> 1.0, 449 -> 2.0 (2^ceil(log2(amax / 448)))."""
    x = torch.full((2, 130), amax / 7)
    x[0, 5] = -amax
    x[1, 129] = amax  # the second tile of token 1
    q = quantization.quantize(x, "tile", scale_format="ue8m0")
    assert q.scale[0, 0].item() == scale and q.scale[1, 1].item() == scale
    assert formats.power_of_two_scale(torch.tensor([max(amax, 1e-4)]) / 448).item() == scale  # floored first
    # the float scale is amax / 448 (floored), never above its power of two
    assert quantization.quantize(x, "tile").scale[0, 0].item() <= scale


def test_ue8m0_scales_keep_every_quotient_within_448_without_a_clamp():
    """Rounding the scale up makes |x / s| <= 448 exactly, also at a max one float32 step above 448 * 2^k and
    at the maxima of random tiles (with float scales the quotient can exceed 448 by a rounding error)."""
    steps = torch.arange(-3, 4, dtype=torch.float64)
    maxima = [448.0 * 2.0 ** k * (1 + j * 2.0 ** -23) for k in range(-20, 21, 3) for j in steps.tolist()]
    x = torch.cat([torch.tensor(maxima, dtype=torch.float32)[:, None] * torch.linspace(-1, 1, 128)[None, :],
                   activations(2000, 128, seed=7)])  # [2105, 128]: one 1 x 128 tile per row
    x = x.flip(1)  # the maximum |x| comes first in the first rows
    q = quantization.quantize(x, "tile", scale_format="ue8m0")
    quotient = x / q.scale  # [rows, 128] / [rows, 1], no clamp
    assert quotient.abs().max() <= 448 and (quotient.abs().amax(dim=1) > 224).all()
    assert torch.equal(q.data.float(), quotient.to(E4M3).float())  # the clamp changes nothing
    assert torch.equal(torch.log2(q.scale), torch.log2(q.scale).round())
    float_quotient = x / quantization.quantize(x, "tile").scale
    assert float_quotient.abs().max() > 448  # the float scale's rounding: what the clamp is for


def test_outliers_only_spoil_their_own_tiles():
    x = activations(256, 512, outliers=False)
    x[:, 3] *= 1000  # one outlier channel: in tile column 0 only
    errors = {g: ((quantization.fake_quantize(x, g) - x).abs() / x.abs())[:, 128:].mean() for g in formats.GRANULARITIES}
    assert errors["tile"] <= errors["block"] < errors["tensor"]  # mean relative error of the other channels
    assert errors["tensor"] > 4 * errors["tile"]


@pytest.mark.parametrize("bad, error, phrase", [
    (torch.tensor([[1.0, float("nan")]]), ValueError, "non-finite"),
    (torch.tensor([[1.0, float("inf")]]), ValueError, "non-finite"),
    (torch.ones(3), ValueError, "matrix"),
    (torch.ones(0, 4), ValueError, "non-empty"),
    (torch.ones(2, 2, dtype=torch.int64), TypeError, "float tensor"),
    (torch.ones(2, 2).to(E4M3), TypeError, "float tensor"),
])
def test_quantize_rejects_bad_input(bad, error, phrase):
    with pytest.raises(error, match=phrase):
        quantization.quantize(bad)


def test_quantize_rejects_bad_options():
    with pytest.raises(ValueError, match="granularity"):
        quantization.quantize(torch.ones(2, 2), "channel")
    for bad in ("UE8M0", "e8m0", None):
        with pytest.raises(ValueError, match=r"scale_format must be one of \('float', 'ue8m0'\)"):
            quantization.quantize(torch.ones(2, 2), "tile", scale_format=bad)
        with pytest.raises(ValueError, match="scale_format"):
            quantization.fake_quantize(torch.ones(2, 2), "tile", E4M3, bad)
        with pytest.raises(ValueError, match="scale_format"):
            linear.fp8_linear(torch.ones(2, 2), torch.ones(3, 2), bad)
        with pytest.raises(ValueError, match="scale_format"):
            linear.to_fp8(torch.nn.Linear(2, 2), bad)
    with pytest.raises(TypeError, match="float8"):
        quantization.quantize(torch.ones(2, 2), "tile", torch.bfloat16)


# ------------------------------------------------------------------------------------------ GEMM
@pytest.mark.parametrize("a_gran, b_gran", [("tile", "block"), ("tile", "tile"), ("tensor", "tensor"),
                                            ("block", "block")])
@pytest.mark.parametrize("M, N, K", [(5, 7, 3), (33, 130, 200), (128, 64, 384), (1, 1, 129)])
def test_scaled_mm_equals_dequantise_and_matmul(a_gran, b_gran, M, N, K):
    a = quantization.quantize(activations(M, K, seed=1), a_gran)
    b = quantization.quantize(torch.randn(N, K) / math.sqrt(K), b_gran)
    reference = (a.dequantize().double() @ b.dequantize().double().t())
    for backend in ("scaled_mm", "dequant", "auto"):
        out = linear.scaled_matmul(a, b, backend)
        assert out.dtype == torch.float32 and out.shape == (M, N)
        torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5 * reference.abs().max())


def test_scaled_matmul_rejects_bad_input():
    a, b = quantization.quantize(torch.ones(2, 3)), quantization.quantize(torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"a \[M, K\] and b \[N, K\]"):
        linear.scaled_matmul(a, b)
    with pytest.raises(ValueError, match="backend"):
        linear.scaled_matmul(a, quantization.quantize(torch.ones(4, 3)), "cuda")


# ------------------------------------------------------------------------------------------ FP8 linear
U = 2.0 ** -4  # E4M3: half an ulp, relative


def gemm_bound(a, a_gran, b, b_gran):
    """Elementwise bound on |fp8(a) fp8(b)^T - a b^T|: each operand within u |.| + delta of itself, so the
    error is at most (2u + u^2)(|a| + delta_a)(|b| + delta_b)^T, delta = half the smallest subnormal x scale."""
    def padded(x, gran):
        q = quantization.quantize(x, gran)
        tile = q.tile
        scale = q.scale.repeat_interleave(tile[0], 0)[:x.shape[0]].repeat_interleave(tile[1], 1)[:, :x.shape[1]]
        return x.abs().double() + SMALLEST_SUBNORMAL[E4M3] / 2 * scale.double()
    return (2 * U + U * U) * padded(a, a_gran) @ padded(b, b_gran).t() + 1e-6


@pytest.mark.parametrize("M, K, N", [(6, 20, 9), (70, 200, 130), (300, 128, 64)])
def test_fp8_linear_gradients_against_float64(M, K, N):
    torch.manual_seed(M)
    x = activations(M, K, seed=K).requires_grad_()
    w = (torch.randn(N, K) / math.sqrt(K)).requires_grad_()
    grad_out = torch.randn(M, N)
    y = linear.fp8_linear(x, w)
    y.backward(grad_out)
    x64, w64, g64 = x.detach().double(), w.detach().double(), grad_out.double()
    exact_y, exact_dx, exact_dw = x64 @ w64.t(), g64 @ w64, g64.t() @ x64
    # within the rounding bound of E4M3 operands, GEMM by GEMM, with the layouts of [V3] Figure 7
    assert ((y.double() - exact_y).abs() <= gemm_bound(x.detach(), "tile", w.detach(), "block")).all()
    assert ((x.grad.double() - exact_dx).abs()
            <= gemm_bound(grad_out, "tile", w.detach().t().contiguous(), "block")).all()
    assert ((w.grad.double() - exact_dw).abs()
            <= gemm_bound(grad_out.t().contiguous(), "tile", x.detach().t().contiguous(), "tile")).all()
    # and norm-wise: a few percent, not more (E4M3 keeps 3 mantissa bits)
    for got, exact in ((y, exact_y), (x.grad, exact_dx), (w.grad, exact_dw)):
        assert 1e-4 < quantization.relative_error(got, exact) < 0.08


@pytest.mark.parametrize("scale_format", formats.SCALE_FORMATS)
def test_fp8_linear_gradients_equal_the_dequantised_gemms(scale_format):
    """Which tensor is quantised in which layout: Dgrad = q(dy, 1x128 along N) q(W, 128x128);
    Wgrad = q(dy^T, 1x128 along tokens) q(x^T, 1x128 along tokens)^T; every scale in the format asked for."""
    x = activations(150, 260, seed=3).requires_grad_()
    w = torch.randn(140, 260).requires_grad_()
    grad_out = activations(150, 140, seed=4)
    y = linear.fp8_linear(x, w, scale_format)
    y.backward(grad_out)
    fq = functools.partial(quantization.fake_quantize, scale_format=scale_format)
    torch.testing.assert_close(y, fq(x.detach(), "tile") @ fq(w.detach(), "block").t(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(x.grad, fq(grad_out, "tile") @ fq(w.detach(), "block"), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, fq(grad_out.t().contiguous(), "tile") @ fq(x.detach().t().contiguous(),
                                                                                   "tile").t(), rtol=1e-5, atol=1e-3)


def test_fp8_linear_shapes_and_bad_input():
    x = torch.randn(2, 3, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    assert linear.fp8_linear(x, w).shape == (2, 3, 8)
    assert linear.fp8_linear(torch.randn(0, 16), w).shape == (0, 8)
    with pytest.raises(ValueError, match=r"x \[\.\.\., K\] and weight \[N, K\]"):
        linear.fp8_linear(x, torch.randn(8, 15))
    with pytest.raises(ValueError, match="non-finite"):
        linear.fp8_linear(torch.full((2, 16), float("nan")), w)


def test_nothing_is_checked_inside_the_fp8_layer():
    """Called by a model (inside its boundary) and in the backward pass, the FP8 layer reads nothing back to check:
    NaN flows to the output and the gradients, where the training step's loss and gradient-norm checks catch it.
    Failed before: quantize's finiteness check ran on every operand, forward and backward (NonFiniteError)."""
    x = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    out = linear.fp8_linear(x, w)
    out.backward(torch.full_like(out, float("nan")))
    assert torch.isnan(x.grad).all() and torch.isnan(w.grad).all()
    inside = boundary(lambda **arguments: None)(lambda layer, h: layer(h))  # a model's forward, say
    layer = linear.FP8Linear(16, 8, bias=False)
    assert torch.isnan(inside(layer, torch.full((4, 16), float("nan")))).all()
    with pytest.raises(NonFiniteError, match="fp8_linear got non-finite values"):  # called by a user: checked
        layer(torch.full((4, 16), float("nan")))


# ------------------------------------------------------------------------------------------ accumulation
def slow_round(value: float, bits: int, rounding: str) -> float:
    if value == 0:
        return 0.0
    mantissa, exponent = math.frexp(value)
    scaled = mantissa * 2 ** (bits + 1)
    kept = round(scaled) if rounding == "nearest" else math.trunc(scaled)  # round(): ties to even
    return math.ldexp(kept / 2 ** (bits + 1), exponent)


def slow_accumulate(products, bits, promote_every, rounding):
    out = torch.empty(products.shape[:-1], dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in products.shape[:-1])).reshape(-1, 2).tolist():
        total, partial = 0.0, 0.0
        for k, p in enumerate(products[tuple(index)].tolist()):
            partial = slow_round(partial + p, bits, rounding)
            if promote_every and (k + 1) % promote_every == 0:
                total, partial = float(torch.tensor(total + partial, dtype=torch.float32)), 0.0
        out[tuple(index)] = float(torch.tensor(total + partial, dtype=torch.float32)) if promote_every else partial
    return out


@pytest.mark.parametrize("bits, promote_every, rounding", [(13, None, "nearest"), (13, 16, "nearest"),
                                                            (6, None, "truncate"), (6, 7, "truncate")])
def test_accumulate_matches_scalar_loop(bits, promote_every, rounding):
    g = torch.Generator().manual_seed(bits)
    products = accumulation.fp8_products(torch.randn(3, 50, generator=g), torch.randn(2, 50, generator=g))
    got = accumulation.accumulate(products, bits, promote_every, rounding)
    assert got.shape == (3, 2)
    assert torch.equal(got, slow_accumulate(products, bits, promote_every, rounding))


def test_promotion_shrinks_the_accumulation_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 4096, generator=g), torch.rand(4, 4096, generator=g)
    products = accumulation.fp8_products(quantization.fake_quantize(a), quantization.fake_quantize(b, "block"))
    exact = products.sum(-1)
    error = {n: ((accumulation.accumulate(products, 13, n, "truncate") - exact).abs() / exact).max() for n in (None, 128)}
    assert error[None] > 0.01 and error[128] < error[None] / 10
    assert (accumulation.accumulate(products, 52) - exact).abs().max() < 1e-9 * exact.max()


def test_accumulate_rejects_bad_input():
    with pytest.raises(ValueError, match="K >= 1"):
        accumulation.accumulate(torch.ones(2, 0))
    with pytest.raises(ValueError, match="mantissa_bits"):
        accumulation.accumulate(torch.ones(2, 3), 0)
    with pytest.raises(ValueError, match="promote_every"):
        accumulation.accumulate(torch.ones(2, 3), 13, 0)
    with pytest.raises(ValueError, match="rounding"):
        accumulation.accumulate(torch.ones(2, 3), 13, None, "up")
    with pytest.raises(ValueError, match="non-finite"):
        accumulation.accumulate(torch.tensor([1.0, float("inf")]))


# ------------------------------------------------------------------------------------------ the model
def test_to_fp8_converts_the_gemms_and_keeps_the_rest():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=32, n_routed_experts=4, mtp_depth=0)
    model = TinyDeepSeek(config)
    params_before = dict(model.named_parameters())
    keys_before = list(model.state_dict())
    tokens = torch.randint(0, 32, (2, 17))
    with torch.no_grad():
        reference = model(tokens[:, :-1])
    assert linear.to_fp8(linear.to_fp8(model)) is model  # twice is harmless
    assert list(model.state_dict()) == keys_before
    assert all(p is params_before[name] for name, p in model.named_parameters())
    block = model.blocks[1]
    assert isinstance(block.attn.qkv, linear.FP8Linear) and isinstance(block.attn.out, linear.FP8Linear)
    assert block.ffn.expert_linear is linear.fp8_linear and block.ffn.shared.linear is linear.fp8_linear
    assert model.blocks[0].ffn.linear is linear.fp8_linear
    assert type(model.head) is torch.nn.Linear and type(model.embed) is torch.nn.Embedding
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    assert 1e-4 < quantization.relative_error(logits, reference) < 0.1
    main, _ = model.losses(tokens)
    main.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_to_fp8_passes_the_scale_format_on():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=32, n_routed_experts=4, mtp_depth=0)
    model = TinyDeepSeek(config)
    tokens = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        reference = model(tokens)
        float_logits = linear.to_fp8(model)(tokens)
        logits = linear.to_fp8(model, "ue8m0")(tokens)  # the second call's format wins
    block = model.blocks[1]
    assert block.attn.qkv.scale_format == "ue8m0" and block.attn.out.scale_format == "ue8m0"
    for gemm in (block.ffn.expert_linear, block.ffn.shared.linear, model.blocks[0].ffn.linear):
        assert gemm.func is linear.fp8_linear and gemm.keywords == {"scale_format": "ue8m0"}
    assert not torch.equal(logits, float_logits)  # other scales, other roundings
    assert 1e-4 < quantization.relative_error(logits, reference) < 0.15


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"matrix \[rows, cols\]"):
        quantization.tile_shape("tile", (5,))
    with pytest.raises(TypeError, match="Quantized"):
        linear.scaled_matmul(torch.randn(4, 128), torch.randn(4, 128))
    with pytest.raises(ValueError, match=r"x \[\.\.\., K\]"):
        linear.fp8_linear(torch.tensor(1.0), torch.randn(3, 1))
    with pytest.raises(ValueError, match=r"x \[\.\.\., K\]"):
        linear.fp8_linear(torch.randn(2, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="0..52"):
        accumulation.round_mantissa(torch.ones(2, dtype=torch.float64), -1)
    with pytest.raises(TypeError, match="float tensor"):
        accumulation.round_mantissa(torch.ones(2, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="promote_every must be an int"):
        accumulation.accumulate(torch.ones(3, 4), 13, 2.0)
    with pytest.raises(ValueError, match="promote_every must be an int >= 1"):
        accumulation.accumulate(torch.ones(3, 4), 13, 0)
    with pytest.raises(ValueError, match=r"a \[M, K\] and b \[N, K\]"):
        accumulation.fp8_products(torch.randn(2, 4), torch.randn(3, 1))  # would broadcast silently
    with pytest.raises(ValueError, match="one shape"):
        quantization.relative_error(torch.randn(3, 4), torch.randn(4))  # would broadcast silently
    with pytest.raises(TypeError, match="nn.Module"):
        linear.to_fp8("model")
