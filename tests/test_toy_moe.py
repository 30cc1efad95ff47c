"""The toy load-balancing experiments of notebooks 02 and 03: shapes, determinism, and the effects they show."""

import pytest
import torch

from course_lib.moe import balance
from course_lib.moe.toy import (ClusterTask, ToyConfig, make_toy_moe, simulate_bias_balancing, skewed_scores, smooth,
                                train_toy_moe)

SMALL = ToyConfig(batch_size=64)


def test_history_shapes_and_consistency():
    h = train_toy_moe("loss_free", 7, config=SMALL, n_eval_tokens=100)
    n = SMALL.n_experts
    assert h.steps == 7
    assert h.task_loss.shape == (7,) and h.max_vio.shape == (7,)
    assert h.load.shape == (7, n) and h.bias.shape == (7, n) and h.eval_load.shape == (n,)
    # every step routes batch_size tokens to top_k experts each
    assert torch.equal(h.load.sum(1), torch.full((7,), float(SMALL.batch_size * SMALL.top_k)))
    assert h.eval_load.sum() == 100 * SMALL.top_k
    assert torch.allclose(h.max_vio, torch.tensor([balance.max_violation(row) for row in h.load]))
    assert h.eval_max_vio == pytest.approx(balance.max_violation(h.eval_load))


def test_bias_moves_only_in_loss_free_mode_and_by_gamma_per_step():
    for mode in ("none", "aux"):
        assert not train_toy_moe(mode, 3, config=SMALL, n_eval_tokens=50).bias.any()
    h = train_toy_moe("loss_free", 3, gamma=0.05, config=SMALL, n_eval_tokens=50)
    steps = torch.diff(torch.cat([torch.zeros(1, SMALL.n_experts), h.bias]), dim=0)
    assert torch.allclose(steps.abs(), torch.full_like(steps, 0.05))  # a sign update: +-gamma (loads never tie here)


def test_same_seed_same_history_and_global_random_state_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_toy_moe("aux", 5, alpha=0.1, seed=3, config=SMALL, n_eval_tokens=64)
    after = torch.rand(1)
    b = train_toy_moe("aux", 5, alpha=0.1, seed=3, config=SMALL, n_eval_tokens=64)
    assert torch.equal(before, after)  # the run used its own generators
    assert torch.equal(a.task_loss, b.task_loss) and torch.equal(a.load, b.load) and a.eval_loss == b.eval_loss
    c = train_toy_moe("aux", 5, alpha=0.1, seed=4, config=SMALL, n_eval_tokens=64)
    assert not torch.equal(a.task_loss, c.task_loss)


def test_skewed_start_routes_every_token_to_the_favoured_experts():
    task = ClusterTask(ToyConfig(), seed=0)
    moe = make_toy_moe(ToyConfig(), task, seed=0)
    x, _ = task.sample(512, torch.Generator().manual_seed(0))
    moe(x)
    favoured = moe.last_indices.sort(dim=-1).values
    assert (favoured == torch.arange(ToyConfig().top_k)).float().mean() > 0.95


@pytest.mark.slow
def test_without_balancing_the_router_stays_collapsed_and_loss_free_balances_it_best():
    none = train_toy_moe("none", 150, n_eval_tokens=1024)
    free = train_toy_moe("loss_free", 150, n_eval_tokens=1024)
    aux = train_toy_moe("aux", 150, alpha=0.1, n_eval_tokens=1024)
    assert none.eval_max_vio > 2.0  # almost every token on 2 of 8 experts (MaxVio 3 is total collapse)
    assert free.eval_max_vio < 0.5 and aux.eval_max_vio < 1.0
    assert free.eval_loss < none.eval_loss
    assert free.eval_loss < aux.eval_loss  # notebook 03's point: balance without the aux loss's interference


def test_simulation_balances_a_skewed_router():
    sim = simulate_bias_balancing(150, gamma=0.01, skew=1.0, n_experts=8, n_tokens=256)
    assert sim.load.shape == (150, 8) and sim.bias.shape == (150, 8) and sim.max_vio.shape == (150,)
    assert not sim.bias[0].any()  # the first batch is routed before any load was seen
    assert sim.max_vio[:5].mean() > 1.0 and sim.max_vio[-50:].mean() < 0.35
    # popular experts (low ids) end with the lowest bias
    assert sim.bias[-1, 0] < 0 < sim.bias[-1, -1]
    again = simulate_bias_balancing(150, gamma=0.01, skew=1.0, n_experts=8, n_tokens=256)
    assert torch.equal(sim.load, again.load)


def test_skewed_scores_favour_low_ids():
    scores = skewed_scores(4000, 6, 2.0, torch.Generator().manual_seed(0))
    assert scores.shape == (4000, 6) and ((scores > 0) & (scores < 1)).all()
    means = scores.mean(0)
    assert (means[:-1] > means[1:]).all()
    flat = skewed_scores(4000, 6, 0.0, torch.Generator().manual_seed(0)).mean(0)
    assert (flat - 0.5).abs().max() < 0.03


def test_smooth_is_a_trailing_mean():
    values = torch.tensor([1.0, 3.0, 5.0, 7.0])
    assert torch.allclose(smooth(values, 2), torch.tensor([1.0, 2.0, 4.0, 6.0]))
    assert torch.allclose(smooth(values, 1), values)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="balanced"), "mode must be one of"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(alpha=-1.0), "alpha must be >= 0"),
])
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_toy_moe(**{"mode": "none", "steps": 1, "config": SMALL, **kwargs})
