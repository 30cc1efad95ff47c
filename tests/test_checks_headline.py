"""Notebook 00's checkers: the reference passes, a stub is reported, and each common mistake (written the way a
learner writes it) is rejected with its own hint."""

import pytest

from checking import stub
from course_lib.checks import CheckFailed, check_gpu_utilisation, check_moe_ffn_params, outcome
from course_lib.headline.compute import gpu_utilisation
from course_lib.headline.param_count import moe_ffn_params


def test_references_pass():
    assert outcome(check_moe_ffn_params, moe_ffn_params) is True
    assert outcome(check_gpu_utilisation, gpu_utilisation) is True


def test_stubs_return_false(capsys):
    assert outcome(check_moe_ffn_params, stub) is False
    assert outcome(check_gpu_utilisation, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 2


# ------------------------------------------------------------------ moe_ffn_params: learner-style mistakes
def two_matrix_experts(dim, expert_dim, n_routed, n_shared, top_k):
    per_expert = dim * expert_dim + expert_dim * dim  # forgot W_gate
    return (n_routed + n_shared) * per_expert + n_routed * dim, (top_k + n_shared) * per_expert + n_routed * dim


def no_router(dim, expert_dim, n_routed, n_shared, top_k):
    e = 3 * dim * expert_dim
    return e * (n_routed + n_shared), e * (top_k + n_shared)


def shared_not_activated(dim, expert_dim, n_routed, n_shared, top_k):
    e, r = 3 * dim * expert_dim, n_routed * dim
    return e * (n_routed + n_shared) + r, e * top_k + r


def no_shared_at_all(dim, expert_dim, n_routed, n_shared, top_k):
    e, r = 3 * dim * expert_dim, n_routed * dim
    return e * n_routed + r, e * top_k + r


def router_only_in_total(dim, expert_dim, n_routed, n_shared, top_k):
    e = 3 * dim * expert_dim
    return e * (n_routed + n_shared) + n_routed * dim, e * (top_k + n_shared)


def swapped(dim, expert_dim, n_routed, n_shared, top_k):
    total, active = moe_ffn_params(dim, expert_dim, n_routed, n_shared, top_k)
    return active, total


def all_activated(dim, expert_dim, n_routed, n_shared, top_k):
    total = 3 * dim * expert_dim * (n_routed + n_shared) + n_routed * dim
    return total, total


@pytest.mark.parametrize("wrong, hint", [
    (two_matrix_experts, "THREE"),
    (no_router, "router is missing"),
    (shared_not_activated, "missing from the activated count"),
    (no_shared_at_all, "missing from both counts"),
    (router_only_in_total, "counted in the total but not in the activated"),
    (swapped, "swapped"),
    (all_activated, "activated count equals the total"),
])
def test_moe_ffn_params_mistakes_are_named(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        check_moe_ffn_params(wrong)


def test_moe_ffn_params_returning_one_number_is_explained():
    with pytest.raises(CheckFailed, match="tuple of 2 items"):
        check_moe_ffn_params(lambda d, h, n, s, k: 3 * d * h * (n + s))


# ------------------------------------------------------------------ gpu_utilisation: learner-style mistakes
def forward_only(params, tokens, hours, peak):
    return 2 * params * tokens / (hours * 3600) / peak


def four_flops(params, tokens, hours, peak):
    return 4 * params * tokens / (hours * 3600 * peak)


def hours_not_seconds(params, tokens, hours, peak):
    return 6 * params * tokens / hours / peak


def as_percent(params, tokens, hours, peak):
    return 100 * 6 * params * tokens / (hours * 3600 * peak)


def inverted(params, tokens, hours, peak):
    return peak * hours * 3600 / (6 * params * tokens)


@pytest.mark.parametrize("wrong, hint", [
    (forward_only, "forward pass only"),
    (four_flops, "makes 6"),
    (hours_not_seconds, "multiply the hours by 3600"),
    (as_percent, "Return a fraction"),
    (inverted, "upside down"),
])
def test_gpu_utilisation_mistakes_are_named(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        check_gpu_utilisation(wrong)


def test_gpu_utilisation_crash_is_explained():
    def typo(activated_params, tokens, gpu_hours, peak_flops):
        return 6 * activated_params * tokens / (gpu_hour * 3600 * peak_flops)  # noqa: F821

    with pytest.raises(CheckFailed, match="raised NameError"):
        check_gpu_utilisation(typo)
