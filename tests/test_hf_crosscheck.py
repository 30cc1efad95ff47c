"""Cross-check routing.topk_route and moe.DeepSeekMoE against Hugging Face transformers' DeepSeek-V3 router and
MoE layer on identical weights (offline: a random tiny DeepseekV3Config, no download)."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")

import hf_reference  # noqa: E402  (tests/hf_reference.py)
from course_lib.moe.layer import DeepSeekMoE  # noqa: E402
from course_lib.moe.routing import topk_route  # noqa: E402

DIM, EXPERT_DIM, N_ROUTED, TOP_K, N_SHARED = 16, 8, 8, 2, 1


def hf_config(n_group=4, topk_group=2, route_scale=2.5):
    return hf_reference.hf_config(DIM, EXPERT_DIM, N_ROUTED, TOP_K, N_SHARED, n_group, topk_group, route_scale)


def by_expert(weights, indices):
    """Sort each token's (weight, index) pairs by expert id: HF returns its top-k unsorted."""
    order = indices.argsort(dim=-1)
    return weights.gather(-1, order), indices.gather(-1, order)


def hf_route(hidden, centroids, bias, n_group, topk_group, route_scale):
    _, weights, indices = hf_reference.hf_router(hf_config(n_group, topk_group, route_scale), centroids, bias)(hidden)
    return weights, indices


@pytest.mark.parametrize("n_group, topk_group, route_scale", [(1, 1, 1.0), (4, 2, 2.5), (2, 1, 2.5), (4, 1, 1.0)])
def test_router_agrees_with_transformers(n_group, topk_group, route_scale):
    g = torch.Generator().manual_seed(n_group * 10 + topk_group)
    hidden, centroids = torch.randn(32, DIM, generator=g), torch.randn(N_ROUTED, DIM, generator=g) * 0.5
    bias = torch.rand(N_ROUTED, generator=g) * 0.3  # >= 0: biased scores stay positive, so 0 vs -inf masking agree
    scores = torch.sigmoid(hidden @ centroids.T)
    ours = by_expert(*topk_route(scores, TOP_K, bias, n_group, topk_group, route_scale))
    theirs = by_expert(*hf_route(hidden, centroids, bias, n_group, topk_group, route_scale))
    assert torch.equal(ours[1], theirs[1])
    torch.testing.assert_close(ours[0], theirs[0])


def test_negative_biased_scores_need_minus_infinity():
    """Where masking dropped groups with 0 and with -inf differ: every biased score negative.

    The paper's rule and [CODE] (DeepSeek-V3 inference/model.py) mask with -inf, and so does course_lib. Older
    transformers releases (and the first modeling_deepseek.py on the Hub) masked with 0.0: a dropped expert then
    scores 0 and beats every negative kept one. transformers 5.x masks with -inf too; whichever release is
    installed, this test states which behaviour it has.
    """
    hidden = torch.zeros(1, DIM)  # every score is sigmoid(0) = 0.5
    centroids = torch.zeros(N_ROUTED, DIM)
    bias = torch.tensor([-0.6, -0.7, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0])  # group 0 (experts 0, 1) is the best
    ours = topk_route(torch.sigmoid(hidden @ centroids.T), TOP_K, bias, n_groups=4, topk_groups=1)[1]
    assert sorted(ours[0].tolist()) == [0, 1]  # the only kept group, although its biased scores are negative
    theirs = sorted(hf_route(hidden, centroids, bias, 4, 1, 1.0)[1][0].tolist())
    masked_with_zero = theirs != [0, 1]
    if masked_with_zero:  # a 0.0-masking release: two experts of the dropped groups (biased score 0 > -0.1)
        assert all(i >= 2 for i in theirs)
    else:
        assert theirs == [0, 1]


@pytest.mark.parametrize("n_groups, topk_groups", [(1, 1), (4, 2)])
def test_moe_layer_agrees_with_transformers(n_groups, topk_groups):
    torch.manual_seed(0)
    moe = DeepSeekMoE(DIM, EXPERT_DIM, N_ROUTED, N_SHARED, TOP_K, n_groups, topk_groups, route_scale=2.5)
    with torch.no_grad():
        moe.bias.copy_(torch.rand(N_ROUTED) * 0.2)
    hf = hf_reference.hf_moe_like(moe)
    x = torch.randn(2, 7, DIM)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = moe(x_ours), hf(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    # Same gradients too: for the input, the centroids (through the gate weights) and the experts.
    grad = torch.randn_like(out_ours)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moe.centroids.grad, hf.gate.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moe.w_down.grad, hf.experts.down_proj.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([moe.w_gate.grad, moe.w_up.grad], dim=1), hf.experts.gate_up_proj.grad,
                               rtol=1e-5, atol=1e-6)
