"""DeepSeekMoE: output against a slow per-token loop version, the bias buffer, load counting, gradients."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.moe.balance import sequence_balance_loss
from course_lib.moe.layer import DeepSeekMoE


@torch.no_grad()
def loop_moe(moe: DeepSeekMoE, x: torch.Tensor) -> torch.Tensor:
    """The layer one token and one expert at a time ([V3] eqs. 12-16), without topk_route or the dispatch."""
    flat = x.reshape(-1, moe.dim)
    n = moe.n_routed_experts
    size = n // moe.n_groups
    outputs = []
    for u in flat:
        s = [torch.sigmoid(u @ moe.centroids[i]) for i in range(n)]
        biased = [float(s[i]) + float(moe.bias[i]) for i in range(n)]
        if moe.n_groups > 1:
            group = [sum(sorted(biased[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(moe.n_groups)]
            kept = sorted(range(moe.n_groups), key=lambda g: -group[g])[:moe.topk_groups]
            biased = [b if i // size in kept else float("-inf") for i, b in enumerate(biased)]
        chosen = sorted(range(n), key=lambda i: -biased[i])[:moe.top_k]
        total = sum(s[i] for i in chosen)
        out = torch.zeros(moe.dim)
        for i in chosen:
            hidden = F.silu(moe.w_gate[i] @ u) * (moe.w_up[i] @ u)
            out = out + s[i] / total * moe.route_scale * (moe.w_down[i] @ hidden)
        if moe.shared is not None:
            out = out + moe.shared(u)
        outputs.append(out)
    return torch.stack(outputs).reshape(x.shape)


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = dict(dim=12, expert_dim=6, n_routed_experts=8, n_shared_experts=1, top_k=2)
    config.update(kwargs)
    return DeepSeekMoE(**config)


# ------------------------------------------------------------------------------------------ output
@pytest.mark.parametrize("kwargs", [
    {},
    {"n_shared_experts": 0, "top_k": 3},
    {"n_shared_experts": 2, "n_groups": 4, "topk_groups": 2, "route_scale": 2.5},
    {"top_k": 8},
])
def test_matches_loop_version(kwargs):
    moe = make(**kwargs)
    with torch.no_grad():
        moe.bias.copy_(torch.randn(moe.n_routed_experts) * 0.2)
    x = torch.randn(3, 5, moe.dim)
    torch.testing.assert_close(moe(x), loop_moe(moe, x), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), n_groups=st.sampled_from([1, 2, 4]),
       top_k=st.integers(1, 4), shared=st.integers(0, 2), seed=st.integers(0, 999))
def test_matches_loop_version_random_shapes(lead, n_groups, top_k, shared, seed):
    # 8 experts: half of the groups kept always leaves at least 4 >= top_k experts
    moe = make(seed, n_shared_experts=shared, top_k=top_k, n_groups=n_groups, topk_groups=max(1, n_groups // 2))
    x = torch.randn(*lead, moe.dim)
    out = moe(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, loop_moe(moe, x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ state
def test_bias_is_a_persistent_float32_buffer_without_grad():
    moe = make()
    assert moe.bias.dtype == torch.float32 and not moe.bias.requires_grad
    assert "bias" in moe.state_dict() and "load" not in moe.state_dict()
    assert "bias" not in dict(moe.named_parameters())
    with torch.no_grad():
        moe.bias.fill_(0.25)
    restored = make(seed=1)
    restored.load_state_dict(moe.state_dict())
    assert torch.equal(restored.bias, moe.bias)


def test_load_counted_only_in_training_forwards_with_grad():
    moe = make()
    x = torch.randn(4, 3, moe.dim)  # 12 tokens, 2 assignments each
    moe.train()
    moe(x)
    assert moe.load.sum().item() == 24
    assert torch.equal(moe.load, moe.last_load)
    with torch.no_grad():
        moe(x)
    moe.eval()
    moe(x)
    assert moe.load.sum().item() == 24  # neither the no_grad nor the eval forward counted
    moe.train()
    moe(x)
    assert moe.load.sum().item() == 48  # micro-batches add up until the update
    assert moe.last_load.sum().item() == 24


def test_update_bias_applies_the_sign_rule_and_resets():
    moe = make()
    moe.train()
    moe(torch.randn(16, moe.dim))
    load = moe.load.clone()
    used = moe.update_bias(gamma=0.01)
    assert torch.equal(used, load)
    expected = 0.01 * torch.sign(load.mean() - load)
    torch.testing.assert_close(moe.bias, expected)
    assert moe.load.sum().item() == 0 and not moe.bias.requires_grad


def test_gradient_reaches_centroids_and_experts_not_bias():
    moe = make(n_groups=2, topk_groups=1)
    moe.train()
    x = torch.randn(2, 6, moe.dim, requires_grad=True)
    out = moe(x)
    loss = out.square().mean() + sequence_balance_loss(moe.last_scores, moe.top_k, 0.1)
    loss.backward()
    for name in ("centroids", "w_gate", "w_up", "w_down"):
        assert getattr(moe, name).grad.abs().sum() > 0, name
    assert moe.shared.w_gate.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    assert moe.bias.grad is None


def test_last_statistics_have_the_input_layout():
    moe = make()
    moe.train()
    moe(torch.randn(3, 4, moe.dim))
    assert moe.last_scores.shape == (3, 4, 8) and moe.last_scores.requires_grad
    assert moe.last_indices.shape == moe.last_weights.shape == (3, 4, 2)
    assert moe.last_indices.dtype == torch.int64
    moe.eval()
    with torch.no_grad():
        moe(torch.randn(5, moe.dim))
    assert moe.last_scores.shape == (5, 8) and not moe.last_scores.requires_grad


def test_bias_steers_routing_toward_underloaded_experts():
    moe = make()
    moe.train()
    x = torch.randn(64, moe.dim)
    moe(x)
    before = moe.load.clone()
    for _ in range(50):
        moe.update_bias(gamma=0.01)
        moe(x)
    assert moe.load.max() - moe.load.min() < before.max() - before.min()


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, phrase", [
    ({"top_k": 9}, "k <= n_experts"),
    ({"n_groups": 3}, "divisible"),
    ({"n_groups": 4, "topk_groups": 1, "top_k": 3}, "kept group(s)"),
    ({"dim": 0}, "dim must be an int >= 1"),
    ({"n_shared_experts": -1}, "n_shared_experts must be an int >= 0"),
])
def test_bad_config(kwargs, phrase):
    with pytest.raises(ValueError) as info:
        make(**kwargs)
    assert phrase in str(info.value)


@pytest.mark.parametrize("x, error, phrase", [
    (torch.randn(3, 11), ValueError, "[..., 12]"),
    (torch.randn(0, 12), ValueError, "non-empty"),
    (torch.ones(3, 12, dtype=torch.long), TypeError, "floating-point"),
])
def test_bad_input(x, error, phrase):
    with pytest.raises(error) as info:
        make()(x)
    assert phrase in str(info.value)


HOST_READS = ("__bool__", "__int__", "__float__", "item")  # what a check reads back from the device


def count_host_reads(monkeypatch) -> list[str]:
    reads = []
    for name in HOST_READS:
        def spy(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return reads


def test_a_forward_reads_back_once_for_a_user_and_never_inside_another_boundary(monkeypatch):
    """The user's hidden states are checked once (NaN / inf); inside a boundary (a model calling the layer) the
    forward reads nothing back for a check: topk_route and the load count are not re-checked."""
    from course_lib.core.validation import boundary

    torch.manual_seed(0)
    moe = DeepSeekMoE(16, 8, 8, 1, 2).train()
    x = torch.randn(2, 5, 16)
    expected = moe(x)  # also finds, once, whether the grouped GEMMs run here
    reads = count_host_reads(monkeypatch)
    moe.routed_experts = lambda flat, weights, indices, load: flat * weights.sum(-1, keepdim=True)  # no dispatch
    moe(x)
    assert reads == ["__bool__"]
    reads.clear()
    boundary(lambda x: None)(lambda x: moe(x))(x)
    assert reads == []
    assert expected.shape == x.shape


def test_balance_modes_are_defined_once():
    from course_lib.moe import balance, toy
    from course_lib.training import arguments, cli

    assert arguments.BALANCE_MODES is balance.BALANCE_MODES and cli.BALANCE_MODES is balance.BALANCE_MODES
    assert "BALANCE_MODES" not in vars(toy)


def test_no_module_of_moe_or_parallel_uses_another_modules_private_name():
    """A private name (``_name``) of a course_lib module is used only inside that module."""
    import ast
    from pathlib import Path

    import course_lib

    root = Path(course_lib.__file__).parent
    found = []
    for path in sorted([*root.glob("moe/**/*.py"), *root.glob("parallel/**/*.py")]):
        tree = ast.parse(path.read_text())
        modules = set()  # names this file binds to course_lib modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.name}: from {node.module} import {alias.name}")
                    modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found, found
