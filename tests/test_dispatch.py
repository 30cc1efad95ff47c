"""The routed experts' dispatch: the expert loop and the grouped GEMMs against a slow per-token loop, in outputs and
gradients, including experts that receive no token and a batch of one token; the choice between them."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from course_lib.moe import dispatch
from course_lib.moe.balance import expert_load
from course_lib.moe.layer import DeepSeekMoE

ALIGNED = (torch.zeros(2, 8), torch.zeros(3, 4, 8), torch.zeros(3, 8, 4))  # x, w_gate, w_down: 16-byte rows
GROUPED = dispatch.grouped_mm_available(*ALIGNED)
needs_grouped = pytest.mark.skipif(not GROUPED, reason=f"torch {torch.__version__} has no usable CPU _grouped_mm")


def per_token_loop(x, weights, indices, w_gate, w_up, w_down):
    """sum_j g_{t,j} FFN_{e(t,j)}(x_t), one token and one chosen expert at a time ([V3] eq. 13)."""
    rows = []
    for t in range(x.shape[0]):
        out = x.new_zeros(x.shape[1])
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            out = out + weights[t, j] * (w_down[e] @ (F.silu(w_gate[e] @ x[t]) * (w_up[e] @ x[t])))
        rows.append(out)
    return torch.stack(rows)


def case(tokens, dim=8, expert_dim=4, n_experts=6, top_k=2, used=None, dtype=torch.float32, seed=0):
    """Random inputs of ``routed_experts``; only the experts in ``used`` (default: all) receive tokens."""
    g = torch.Generator().manual_seed(seed)
    used = torch.tensor(used if used is not None else range(n_experts))
    indices = torch.stack([used[torch.randperm(len(used), generator=g)[:top_k]] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=g, dtype=torch.float64).to(dtype)
    x = torch.randn(tokens, dim, generator=g, dtype=torch.float64).to(dtype)
    w_gate, w_up = (torch.randn(n_experts, expert_dim, dim, generator=g, dtype=torch.float64).to(dtype)
                    for _ in range(2))
    w_down = torch.randn(n_experts, dim, expert_dim, generator=g, dtype=torch.float64).to(dtype)
    tensors = [t.requires_grad_() for t in (x, weights, w_gate, w_up, w_down)]
    return tensors, indices


def outputs_and_gradients(fn, tensors, indices):
    x, weights, w_gate, w_up, w_down = tensors
    out = fn(x, weights, indices, w_gate, w_up, w_down)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)).sum(),
                                tensors)
    return [out, *grads]


def assert_matches_slow_loop(implementation, tensors, indices):
    n_experts = tensors[2].shape[0]

    def fast(x, weights, indices, w_gate, w_up, w_down):
        load = expert_load(indices, n_experts)
        return dispatch.routed_experts(x, weights, indices, w_gate, w_up, w_down, load, implementation)

    got = outputs_and_gradients(fast, tensors, indices)
    wide = [t.detach().double().requires_grad_() for t in tensors]  # the reference in float64
    want = outputs_and_gradients(per_token_loop, wide, indices)
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if tensors[0].dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for name, a, b in zip(("output", "x", "weights", "w_gate", "w_up", "w_down"), got, want):
        assert a.dtype == tensors[0].dtype, name
        torch.testing.assert_close(a.double(), b, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


CASES = {
    "all experts used": {"tokens": 13},
    "experts 0, 3 and 5 get no token": {"tokens": 9, "used": [1, 2, 4]},
    "one token": {"tokens": 1},
    "one token, every expert chosen": {"tokens": 1, "top_k": 6},
    "only the last expert used": {"tokens": 5, "top_k": 1, "used": [5]},
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loop_matches_slow_loop(name, dtype):
    assert_matches_slow_loop("loop", *case(**CASES[name], dtype=dtype))


@needs_grouped
@pytest.mark.parametrize("name", CASES)
def test_grouped_mm_matches_slow_loop(name):
    assert_matches_slow_loop("grouped_mm", *case(**CASES[name]))


@needs_grouped
def test_auto_uses_grouped_mm_where_it_can():
    (x, _, w_gate, _, w_down), _ = case(4)
    assert dispatch.grouped_mm_available(x, w_gate, w_down)
    # float64: torch 2.13's CPU _grouped_mm takes float32, bfloat16 and float16 only
    assert not dispatch.grouped_mm_available(x.double(), w_gate.double(), w_down.double())
    (x, _, w_gate, _, w_down), _ = case(4, dim=6, expert_dim=4)  # rows of 24 bytes: not a multiple of 16
    assert not dispatch.grouped_mm_available(x, w_gate, w_down)


def test_the_choice_falls_back_to_the_loop():
    tensors, indices = case(7, dim=6, expert_dim=3)  # odd sizes: grouped_mm cannot run, "auto" loops
    assert_matches_slow_loop("auto", tensors, indices)
    x, weights, w_gate, w_up, w_down = tensors
    load = expert_load(indices, 6)
    with pytest.raises(ValueError, match="implementation='loop'"):
        dispatch.routed_experts(x, weights, indices, w_gate, w_up, w_down, load, "grouped_mm")
    with pytest.raises(ValueError, match="must be one of"):
        dispatch.routed_experts(x, weights, indices, w_gate, w_up, w_down, load, "fast")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_availability_is_the_same_when_first_asked_from_a_forward_without_gradients(mode):
    """The answer is found once per device and dtype: a first question from a no_grad or inference_mode forward
    (a fresh process) gives the answer this process got with gradients on."""
    program = ("import torch; from course_lib.moe import dispatch\n"
               f"with torch.{mode}():\n"
               "    print(dispatch.grouped_mm_available(torch.zeros(2, 8), torch.zeros(3, 4, 8),"
               " torch.zeros(3, 8, 4)))")
    answer = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True)
    assert answer.stdout.split()[-1] == str(GROUPED)


@needs_grouped
def test_layer_gives_the_same_training_step_with_either_implementation(monkeypatch):
    """The whole layer (routing, shared expert, gate gradients into the centroids) with either dispatch."""
    torch.manual_seed(0)
    moe = DeepSeekMoE(dim=16, expert_dim=8, n_routed_experts=8, n_shared_experts=1, top_k=2)
    x = torch.randn(3, 5, 16)
    results = {}
    for implementation in ("grouped_mm", "loop"):
        chosen = dispatch.routed_experts
        monkeypatch.setattr(dispatch, "routed_experts",
                            lambda *args, impl=implementation, chosen=chosen, **kw: chosen(*args, impl, **kw))
        moe.zero_grad()
        out = moe(x)
        out.square().mean().backward()
        results[implementation] = [out] + [p.grad.clone() for p in moe.parameters()]
        monkeypatch.undo()
    for a, b in zip(results["grouped_mm"], results["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
