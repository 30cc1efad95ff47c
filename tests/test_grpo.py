"""GRPO (issue 24): the advantages on the worked example of the facts file, the loss against a slow loop, gradcheck
of the clipped objective, the KL estimator's properties, the single-update case, bad input; batched sampling with
the KV cache, the rule-based reward, routing replay, and a short run of the loop."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.post_training.grpo import group_advantages, grpo_loss, kl_estimator
from course_lib.post_training.loop import GRPOConfig, grpo_train
from course_lib.post_training.rewards import STOP, group_rewards, sorting_examples, sorting_reward
from course_lib.post_training.routing_replay import (replay_routing, router_choice, routing_disagreement,
                                                     routing_of)
from course_lib.post_training.sampling import completion_log_probs, sample_groups
from course_lib.training.data import CharTokenizer
from tiny_models import tiny_model


def slow_grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps, beta):
    """[DSM] eq. 3 written token by token: the mean over completions of each completion's token mean, negated."""
    total = 0.0
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old_logp[i][t])
            clipped = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            surrogate = min(ratio * advantages[i], clipped * advantages[i])
            x = math.exp(ref_logp[i][t] - logp[i][t])  # pi_ref / pi_theta
            terms.append(surrogate - beta * (x - math.log(x) - 1))
        total += sum(terms) / len(terms)
    return -total / len(logp)


def random_batch(n=6, T=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, T, generator=g, dtype=dtype) * 3
    old_logp = logp + (torch.rand(n, T, generator=g, dtype=dtype) - 0.5)  # ratios exp(+-0.5): some clipped
    ref_logp = logp + (torch.rand(n, T, generator=g, dtype=dtype) - 0.5)
    advantages = torch.randn(n, generator=g, dtype=dtype)
    mask = torch.rand(n, T, generator=g) < 0.7
    mask[:, 0] = True
    return logp, old_logp, ref_logp, advantages, mask


# ------------------------------------------------------------------------------------------------ advantages
def test_advantages_worked_example():
    """The facts file's example (Hugging Face LLM course ch. 12): groups of 4, unbiased std, eps 1e-8."""
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 1]])
    expected = torch.tensor([[0.8660, -0.8660, -0.8660, 0.8660], [-0.8660, -0.8660, 0.8660, 0.8660]])
    torch.testing.assert_close(group_advantages(rewards), expected, atol=1e-4, rtol=0)


def test_advantages_are_per_group_and_finite_for_equal_rewards():
    rewards = torch.tensor([[1.0, 1, 1, 1], [0.0, 2, 4, 6]])
    advantages = group_advantages(rewards)
    assert torch.equal(advantages[0], torch.zeros(4))  # std 0: eps keeps 0 / 0 away
    assert advantages[1].mean().abs() < 1e-6 and abs(advantages[1].std().item() - 1) < 1e-6


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("clip_eps, beta", [(0.2, 0.04), (0.1, 0.0), (0.3, 1.0)])
def test_loss_matches_slow_loop(clip_eps, beta):
    batch = random_batch(seed=int(clip_eps * 10))
    expected = slow_grpo_loss(*(t.tolist() for t in batch), clip_eps, beta)
    assert grpo_loss(*batch, clip_eps, beta).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_loss_gradcheck_float64():
    logp, old_logp, ref_logp, advantages, mask = random_batch(seed=3)
    logp.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda lp: grpo_loss(lp, old_logp, ref_logp, advantages, mask, 0.2, 0.04),
                                    (logp,))


def test_no_gradient_into_old_or_reference():
    logp, old_logp, ref_logp, advantages, mask = random_batch(seed=4)
    for t in (logp, old_logp, ref_logp):
        t.requires_grad_(True)
    grpo_loss(logp, old_logp, ref_logp, advantages, mask, 0.2, 0.04).backward()
    assert old_logp.grad is None and ref_logp.grad is None
    assert logp.grad.abs().sum() > 0


def test_padding_does_not_count():
    logp, old_logp, ref_logp, advantages, mask = random_batch(seed=5)
    changed = logp.clone()
    changed[~mask] = -50.0  # whatever the model says at padded positions
    assert grpo_loss(changed, old_logp, ref_logp, advantages, mask).item() == pytest.approx(
        grpo_loss(logp, old_logp, ref_logp, advantages, mask).item(), abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=8), st.lists(st.floats(-20, 0), min_size=8, max_size=8))
def test_kl_estimator_is_nonnegative(logp, ref_logp):
    logp = torch.tensor(logp, dtype=torch.float64)
    ref = torch.tensor(ref_logp[:len(logp)], dtype=torch.float64)
    assert bool((kl_estimator(logp, ref) >= 0).all())
    assert torch.equal(kl_estimator(logp, logp), torch.zeros_like(logp))


def test_single_update_loss_is_zero_but_gradient_is_not():
    """[DSM]'s setting, one update per batch: rho = 1; with beta = 0 the loss is -mean(A) = 0, its gradient not."""
    g = torch.Generator().manual_seed(6)
    rewards = (torch.rand(4, 8, generator=g) < 0.5).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # no group of equal rewards
    advantages = group_advantages(rewards).flatten()  # [32]
    logp = (-torch.rand(32, 4, generator=g) * 3).requires_grad_(True)
    mask = torch.ones(32, 4, dtype=torch.bool)
    loss = grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask, 0.2, 0.0)
    assert loss.item() == 0.0
    loss.backward()
    assert logp.grad.abs().max() > 0.001
    # with ragged completions the value is 0 up to float rounding
    mask[::3, 2:] = False
    assert abs(grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask, 0.2, 0.0).item()) < 1e-6


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: group_advantages(torch.ones(3, 1)), ValueError, "G >= 2"),
    (lambda: group_advantages(torch.ones(8)), ValueError, "[n_prompts, G]"),
    (lambda: group_advantages(torch.ones(2, 4), eps=0.0), ValueError, "eps"),
    (lambda: group_advantages(torch.ones(2, 4, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: grpo_loss(*random_batch()[:4], torch.zeros(6, 5, dtype=torch.bool)), ValueError, "no token in the mask"),
    (lambda: grpo_loss(*random_batch()[:4], torch.ones(6, 5)), TypeError, "bool"),
    (lambda: grpo_loss(random_batch()[0][:, :4], *random_batch()[1:]), ValueError, "shape"),
    (lambda: grpo_loss(*random_batch()[:3], torch.zeros(5, dtype=torch.float64), random_batch()[4]), ValueError,
     "advantages must be [n] = [6]"),
    (lambda: grpo_loss(*random_batch(), clip_eps=0.0), ValueError, "clip_eps"),
    (lambda: grpo_loss(*random_batch(), clip_eps=-0.2), ValueError, "clip_eps"),
    (lambda: grpo_loss(*random_batch(), beta=-1.0), ValueError, "beta"),
    (lambda: kl_estimator(torch.zeros(3), torch.zeros(4)), ValueError, "same shape"),
])
def test_bad_input(call, error, fragment):
    with pytest.raises(error, match=None) as info:
        call()
    assert fragment in str(info.value)


# ------------------------------------------------------------------------------------------------ sampling
TOKENIZER = CharTokenizer()


def prompts_of(examples):
    return torch.stack([TOKENIZER.encode(prompt) for prompt, _ in examples])


def test_sample_groups_batched_with_cache():
    model = tiny_model().eval()
    examples = sorting_examples(3, seed=0)
    stop = TOKENIZER.encode(STOP).item()
    rollout = sample_groups(model, prompts_of(examples), 4, 8, stop, torch.Generator().manual_seed(0))
    n, T = rollout.mask.shape
    assert n == 12 and T <= 8 and rollout.tokens.shape == (12, rollout.prompt_len + T)
    assert torch.equal(rollout.tokens[:4, :rollout.prompt_len], prompts_of(examples)[0].expand(4, -1))
    for row, keep in zip(rollout.completion, rollout.mask):  # the mask ends at the first stop token, inclusive
        stops = (row == stop).nonzero().flatten().tolist()
        assert int(keep.sum()) == (stops[0] + 1 if stops else T) and bool(keep[:int(keep.sum())].all())
    assert [r.shape for r in rollout.routing] == [(12, rollout.prompt_len + T - 1, 2)]
    # old_logp from the sampling pass agrees with the training forward on the same weights
    torch.testing.assert_close(completion_log_probs(model, rollout.tokens, rollout.prompt_len), rollout.old_logp,
                               atol=1e-5, rtol=0)
    # each row is a sample of the model: batched decoding matches one row decoded alone by its log-probabilities
    assert bool((rollout.old_logp <= 0).all())


def test_rewards_are_rules():
    assert sorting_reward("abcde\n", "abcde") == 1.0
    assert sorting_reward("abcde", "abcde") == 0.0  # the line must end
    assert sorting_reward("abced\n", "abcde") == 0.0
    examples = sorting_examples(20, word_len=5, seed=1)
    assert len({p for p, _ in examples}) == 20 and all(a == "".join(sorted(p[5:10])) for p, a in examples)
    held_out = sorting_examples(20, seed=2, exclude={p[5:10] for p, _ in examples})
    assert not {p for p, _ in held_out} & {p for p, _ in examples}


def test_group_rewards_reads_masked_completions():
    model = tiny_model().eval()
    examples = sorting_examples(2, seed=3)
    rollout = sample_groups(model, prompts_of(examples), 3, 6, TOKENIZER.encode(STOP).item(),
                            torch.Generator().manual_seed(1))
    answer = examples[0][1]
    rollout.tokens[1, rollout.prompt_len:] = TOKENIZER.encode((answer + STOP + "zzzzzz")[:rollout.mask.shape[1]])
    rollout.mask[1] = torch.arange(rollout.mask.shape[1]) <= len(answer)
    rewards = group_rewards(rollout, [a for _, a in examples], TOKENIZER)
    assert rewards.shape == (2, 3) and rewards[0, 1] == 1.0


# ------------------------------------------------------------------------------------------------ routing replay
def test_routing_replay_reproduces_sampled_experts():
    model = tiny_model().eval()
    rollout = sample_groups(model, prompts_of(sorting_examples(4, seed=4)), 4, 6, None,
                            torch.Generator().manual_seed(2))
    completion_log_probs(model, rollout.tokens, rollout.prompt_len)
    assert routing_disagreement(rollout.routing, routing_of(model)) < 0.01  # same weights: rounding ties at most
    with torch.no_grad():  # an update moves the router: the free forward now routes some tokens elsewhere
        for layer in model.moe_layers():
            layer.centroids.add_(torch.randn_like(layer.centroids) * 0.5)
    completion_log_probs(model, rollout.tokens, rollout.prompt_len)
    assert routing_disagreement(rollout.routing, routing_of(model)) > 0.05
    with replay_routing(model, rollout.routing):
        completion_log_probs(model, rollout.tokens, rollout.prompt_len)
    assert all(torch.equal(a, b) for a, b in zip(routing_of(model), rollout.routing))  # exactly the sampled ones
    assert routing_disagreement(rollout.routing, router_choice(model)) > 0.05  # the router itself has moved
    assert all(layer.replay_indices is None for layer in model.moe_layers())


def test_replay_is_cleared_after_an_error_and_checks_shapes():
    model = tiny_model().eval()
    rollout = sample_groups(model, prompts_of(sorting_examples(2, seed=5)), 2, 4)
    with pytest.raises(ValueError, match="replay the routing of the same tokens"):
        with replay_routing(model, rollout.routing):
            model(rollout.tokens[:, :3])
    assert all(layer.replay_indices is None for layer in model.moe_layers())
    with pytest.raises(ValueError, match="MoE layers"):
        with replay_routing(model, rollout.routing * 2):
            pass


def test_disagreement_ignores_order_within_top_k():
    a = [torch.tensor([[[0, 1], [2, 3]]])]
    b = [torch.tensor([[[1, 0], [2, 4]]])]
    assert routing_disagreement(a, b) == 0.5
    assert routing_disagreement(a, b, torch.tensor([[True, False]])) == 0.0


# ------------------------------------------------------------------------------------------------ the loop
def test_grpo_train_runs_and_learns_nothing_from_equal_rewards():
    """An untrained model never sorts a word: every reward is 0, every advantage 0, the policy is its reference
    (KL 0, and its gradient 0): the weights do not move."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = grpo_train(model, sorting_examples(8, seed=6), TOKENIZER,
                         GRPOConfig(steps=2, prompts_per_step=2, group_size=4, updates_per_batch=2,
                                    max_new_tokens=4, replay=True), progress=False)
    assert len(history.reward) == 2 and all(math.isfinite(x) for x in history.loss + history.kl)
    assert all(0 <= x <= 1 for x in history.routing_disagreement)
    assert history.logp_gap[0] < 1e-4  # sampling and the first training forward agree before any update
    assert history.reward == [0.0, 0.0] and history.kl[0] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
