"""mtp: the depth loss and the total against loop versions and torch's cross-entropy, stability, bad input, and
the MTP module (shapes, sharing, causality of the whole chain main model -> depth 1 -> depth 2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.model import mtp
from course_lib.core.layers import RMSNorm
from course_lib.model.block import TransformerBlock


# ------------------------------------------------------------------------------------------ slow references
def slow_depth_loss(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> float:
    """[V3] eq. 24 with the report's 1-based indices: L_k = -(1/T) sum_{i=2+k}^{T+1} log P^k_i[t_i], P^k_i being
    the prediction of depth k's position i - k - 1 (1-based), mean over the batch. Plain Python floats."""
    B, T = tokens.shape[0], tokens.shape[1] - 1
    rows, t = logits.tolist(), tokens.tolist()
    total = 0.0
    for b in range(B):
        loss = 0.0
        for i in range(2 + k, T + 2):
            row = rows[b][i - k - 2]  # the position that predicts t_i
            top = max(row)
            log_normaliser = top + math.log(sum(math.exp(v - top) for v in row))
            loss -= row[t[b][i - 1]] - log_normaliser  # t_i is t[b][i - 1]
        total += loss / T
    return total / B


def slow_mtp_loss(depth_logits, tokens, lam) -> float:
    D = len(depth_logits)
    return lam / D * sum(slow_depth_loss(logits, tokens, k) for k, logits in enumerate(depth_logits, start=1))


def random_case(B, T, V, k, seed, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T - k, V, generator=g, dtype=dtype), torch.randint(V, (B, T + 1), generator=g)


# ------------------------------------------------------------------------------------------ depth loss
@pytest.mark.parametrize("B, T, V, k", [(1, 2, 3, 0), (2, 5, 4, 0), (2, 5, 4, 1), (3, 7, 6, 4), (2, 6, 5, 5)])
def test_depth_loss_matches_loop(B, T, V, k):
    logits, tokens = random_case(B, T, V, k, seed=B * 100 + T * 10 + k)
    assert mtp.mtp_depth_loss(logits, tokens, k).item() == pytest.approx(slow_depth_loss(logits, tokens, k), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 10), V=st.integers(1, 9), k=st.integers(0, 9), seed=st.integers(0, 10**6))
def test_depth_loss_properties(B, T, V, k, seed):
    k = k % T
    logits, tokens = random_case(B, T, V, k, seed, scale=3.0, dtype=torch.float64)
    loss = mtp.mtp_depth_loss(logits, tokens, k)
    assert loss.dim() == 0 and loss.dtype == torch.float64 and loss.item() >= 0
    assert loss.item() == pytest.approx(slow_depth_loss(logits, tokens, k), rel=1e-9, abs=1e-12)
    # torch's cross-entropy with an explicit reduction: the sum over all B x (T - k) terms, divided by B T.
    summed = F.cross_entropy(logits.reshape(-1, V), tokens[:, k + 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, summed / (B * T))
    per_term = F.cross_entropy(logits.transpose(1, 2), tokens[:, k + 1:], reduction="none")  # [B, T - k]
    torch.testing.assert_close(loss, (per_term.sum(1) / T).mean())
    # Uniform predictions: each of the T - k terms is log V, and the report divides by T.
    uniform = mtp.mtp_depth_loss(torch.zeros_like(logits), tokens, k)
    assert uniform.item() == pytest.approx((T - k) / T * math.log(V), rel=1e-12, abs=1e-12)


def test_depth_loss_is_not_the_mean_over_positions():
    logits, tokens = random_case(2, 8, 5, 3, seed=0)
    mean_over_positions = F.cross_entropy(logits.reshape(-1, 5), tokens[:, 4:].reshape(-1))
    torch.testing.assert_close(mtp.mtp_depth_loss(logits, tokens, 3), mean_over_positions * 5 / 8)


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e30])
def test_depth_loss_is_stable_for_huge_logits(scale):
    logits, tokens = random_case(2, 6, 5, 1, seed=1)
    big = logits * scale
    loss = mtp.mtp_depth_loss(big, tokens, 1)
    assert torch.isfinite(loss)
    reference = mtp.mtp_depth_loss(big.double(), tokens, 1)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    # The naive log of softmax probabilities breaks down on the very same input.
    naive = -torch.log(torch.softmax(big, -1)).gather(-1, tokens[:, 2:, None]).sum() / (2 * 6)
    assert not torch.isfinite(naive)


def test_depth_loss_is_shift_invariant_and_half_precision_is_upcast():
    logits, tokens = random_case(2, 6, 5, 2, seed=2)
    torch.testing.assert_close(mtp.mtp_depth_loss(logits + 1e4, tokens, 2), mtp.mtp_depth_loss(logits, tokens, 2),
                               rtol=1e-3, atol=1e-3)
    half = mtp.mtp_depth_loss(logits.bfloat16(), tokens, 2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, mtp.mtp_depth_loss(logits.bfloat16().float(), tokens, 2))


def test_depth_loss_gradient_matches_cross_entropy():
    logits, tokens = random_case(2, 6, 5, 1, seed=3)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    mtp.mtp_depth_loss(a, tokens, 1).backward()
    (F.cross_entropy(b.reshape(-1, 5), tokens[:, 2:].reshape(-1), reduction="sum") / (2 * 6)).backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("logits_shape, tokens_shape, k, match", [
    ((2, 4, 4), (2, 7), 1, r"\[batch, T - k, vocab\] = \[2, 5, vocab\]"),  # one position short
    ((2, 6, 4), (2, 7), 1, r"\[batch, T - k, vocab\] = \[2, 5, vocab\]"),  # length T, not T - k
    ((3, 5, 4), (2, 7), 1, r"= \[2, 5, vocab\]"),  # batch mismatch
    ((2, 5), (2, 7), 1, r"\[batch, T - k, vocab\]"),
    ((2, 5, 0), (2, 7), 1, r"\[batch, T - k, vocab\]"),
    ((2, 7, 4), (2, 7), -1, r"0 <= k < T = 6"),
    ((2, 0, 4), (2, 7), 6, r"0 <= k < T = 6"),
    ((0, 5, 4), (0, 7), 1, r"batch >= 1"),  # empty batch
    ((2, 1, 4), (2, 1), 0, r"T \+ 1 >= 2"),
])
def test_depth_loss_bad_shapes(logits_shape, tokens_shape, k, match):
    with pytest.raises(ValueError, match=match):
        mtp.mtp_depth_loss(torch.randn(logits_shape), torch.zeros(tokens_shape, dtype=torch.long), k)


def test_depth_loss_vocab_mismatch():
    tokens = torch.tensor([[0, 1, 2, 7]])
    with pytest.raises(ValueError, match=r"\[0, 5\).*from 1 to 7"):
        mtp.mtp_depth_loss(torch.randn(1, 3, 5), tokens, 0)


@pytest.mark.parametrize("logits, tokens, k", [
    (torch.randn(1, 3, 5), torch.zeros(1, 4), 0),  # float tokens
    (torch.randn(1, 3, 5), torch.zeros(1, 4, dtype=torch.int32), 0),
    (torch.zeros(1, 3, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 0),  # integer logits
    (torch.randn(1, 3, 5), torch.zeros(1, 4, dtype=torch.long), 1.0),  # float k
    (torch.randn(1, 3, 5), [[0, 1, 2, 3]], 0),
])
def test_depth_loss_bad_types(logits, tokens, k):
    with pytest.raises(TypeError, match="int64|floating-point|must be an int"):
        mtp.mtp_depth_loss(logits, tokens, k)


# ------------------------------------------------------------------------------------------ total
@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(2, 9), V=st.integers(2, 7), D=st.integers(1, 4),
       lam=st.sampled_from([0.0, 0.1, 0.3, 1.0]), seed=st.integers(0, 10**6))
def test_mtp_loss_matches_loop(B, T, V, D, lam, seed):
    D = min(D, T - 1)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(V, (B, T + 1), generator=g)
    depth_logits = [torch.randn(B, T - k, V, generator=g, dtype=torch.float64) for k in range(1, D + 1)]
    loss = mtp.mtp_loss(depth_logits, tokens, lam)
    assert loss.item() == pytest.approx(slow_mtp_loss(depth_logits, tokens, lam), rel=1e-9, abs=1e-12)


def test_mtp_loss_with_one_depth_is_lambda_times_the_depth_loss():
    logits, tokens = random_case(2, 6, 5, 1, seed=4)
    torch.testing.assert_close(mtp.mtp_loss([logits], tokens, 0.3), 0.3 * mtp.mtp_depth_loss(logits, tokens, 1))


def test_mtp_loss_bad_input():
    logits, tokens = random_case(2, 6, 5, 1, seed=5)
    with pytest.raises(ValueError, match="D = 0"):
        mtp.mtp_loss([], tokens, 0.3)
    with pytest.raises(TypeError, match="list of D tensors"):
        mtp.mtp_loss(logits, tokens, 0.3)
    with pytest.raises(ValueError, match="lam"):
        mtp.mtp_loss([logits], tokens, -0.1)
    with pytest.raises(ValueError, match=r"depth k = 1 expects logits \[batch, T - k, vocab\] = \[2, 5, vocab\]"):
        mtp.mtp_loss([torch.randn(2, 6, 5)], tokens, 0.3)  # the main model's logits passed as depth 1
    with pytest.raises(ValueError, match="same vocab size"):
        mtp.mtp_loss([torch.randn(2, 5, 5), torch.randn(2, 4, 6)], tokens, 0.3)


# ------------------------------------------------------------------------------------------ the module
DIM, VOCAB, HEADS = 16, 11, 2


def make_chain(D: int, seed: int = 0):
    """A one-block main model and D MTP modules sharing its embedding and head."""
    torch.manual_seed(seed)
    embed, head = torch.nn.Embedding(VOCAB, DIM), torch.nn.Linear(DIM, VOCAB, bias=False)
    main_block, final_norm = TransformerBlock(DIM, HEADS), RMSNorm(DIM)
    modules = [mtp.MTPModule(k, embed, head, TransformerBlock(DIM, HEADS)) for k in range(1, D + 1)]

    def run(inputs):
        h = main_block(embed(inputs))
        logits = [head(final_norm(h))]
        for module in modules:
            h, depth_logits = module(h, inputs)
            logits.append(depth_logits)
        return logits

    return embed, head, modules, run


def test_module_shapes_and_chain_losses():
    embed, head, modules, run = make_chain(D=2)
    tokens = torch.randint(VOCAB, (3, 9))  # T = 8
    main, *depths = run(tokens[:, :-1])
    assert main.shape == (3, 8, VOCAB) and [d.shape for d in depths] == [(3, 7, VOCAB), (3, 6, VOCAB)]
    total = mtp.mtp_depth_loss(main, tokens, 0) + mtp.mtp_loss(depths, tokens, 0.3)
    total.backward()
    assert embed.weight.grad is not None and head.weight.grad is not None
    assert all(p.grad is not None for m in modules for p in m.parameters())


def test_module_forward_matches_per_position_loop():
    _, _, (module,), _ = make_chain(D=1, seed=1)
    module.double()
    module.embed.double()
    module.head.double()
    h_prev = torch.randn(2, 7, DIM, dtype=torch.float64)
    tokens = torch.randint(VOCAB, (2, 7))
    h, logits = module(h_prev, tokens)
    # h'_i = M_1 [RMSNorm(h_i) ; RMSNorm(Emb(t_{i+1}))] for i = 1..T-1, one position at a time.
    projected = torch.stack([
        module.proj(torch.cat([module.norm_h(h_prev[:, i]), module.norm_e(module.embed(tokens[:, i + 1]))], -1))
        for i in range(6)], dim=1)
    torch.testing.assert_close(h, module.block(projected))
    torch.testing.assert_close(logits, module.head(module.norm_out(h)))


def test_module_shares_embedding_and_head_without_owning_them():
    embed, head, (module,), _ = make_chain(D=1)
    assert module.embed is embed and module.head is head
    own = {id(p) for p in module.parameters()}
    assert id(embed.weight) not in own and id(head.weight) not in own
    assert not any(key.startswith(("embed", "head", "shared")) for key in module.state_dict())
    assert set(dict(module.named_children())) == {"norm_h", "norm_e", "proj", "block", "norm_out"}
    assert module.proj.weight.shape == (DIM, 2 * DIM)  # M_k: 2 dim -> dim


@settings(max_examples=12, deadline=None)
@given(T=st.integers(4, 10), position=st.integers(0, 9), seed=st.integers(0, 1000))
def test_depth_k_never_sees_tokens_after_i_plus_k(T, position, seed):
    """Depth k's output at (0-based) position j reads tokens[0 .. j + k] only: changing the input token at
    `position` leaves every depth-k output at j < position - k unchanged, and changes the one at j = position - k."""
    position = position % T
    *_, run = make_chain(D=2, seed=seed)
    tokens = torch.randint(VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))
    changed = tokens.clone()
    changed[:, position] = (changed[:, position] + 1) % VOCAB
    with torch.no_grad():
        before, after = run(tokens), run(changed)
    for k, (a, b) in enumerate(zip(before, after)):  # k = 0 is the main model
        safe = max(0, position - k)
        torch.testing.assert_close(a[:, :safe], b[:, :safe], rtol=1e-5, atol=1e-5)
        if position - k >= 0:
            assert not torch.allclose(a[:, position - k], b[:, position - k])


def test_module_bad_input():
    embed, head, (module,), _ = make_chain(D=1)
    with pytest.raises(ValueError, match="depth"):
        mtp.MTPModule(0, embed, head, TransformerBlock(DIM, HEADS))
    with pytest.raises(TypeError, match="nn.Embedding"):
        mtp.MTPModule(1, head, head, TransformerBlock(DIM, HEADS))
    with pytest.raises(TypeError, match="int64"):
        module(torch.randn(2, 5, DIM), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least T - k positions"):
        module(torch.randn(2, 3, DIM), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="1 <= k < T"):
        module(torch.randn(2, 1, DIM), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="same batch and dim"):
        module(torch.randn(2, 5, DIM + 1), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        module(torch.randn(0, 5, DIM), torch.zeros(0, 5, dtype=torch.long))
