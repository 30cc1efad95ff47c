"""The functions that accept tensors on any device, run on ``device`` (CPU by default; CUDA in ``make test-gpu``)
and compared with the same computation on the CPU: same experts chosen, same values within float32 round-off,
state kept on the device and in float32."""

import pytest
import torch

from course_lib.moe import balance
from course_lib.model import mtp
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE
from course_lib.moe.routing import affinity_scores, topk_route
from tiny_models import tiny_config

CLOSE = {"atol": 1e-4, "rtol": 1e-3}  # float32 on two devices: different kernels, different summation orders


def _on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("n_groups, topk_groups", [(1, 1), (4, 2)])
def test_routing_chooses_the_same_experts(device, n_groups, topk_groups):
    generator = torch.Generator().manual_seed(0)
    x, centroids = torch.randn(64, 16, generator=generator), torch.randn(8, 16, generator=generator)
    bias = torch.randn(8, generator=generator) * 0.1  # stays on the CPU: topk_route moves it to the scores
    expected_w, expected_i = topk_route(affinity_scores(x, centroids), 2, bias, n_groups, topk_groups, 2.5)
    weights, indices = topk_route(affinity_scores(*_on(device, x, centroids)), 2, bias, n_groups, topk_groups, 2.5)
    assert weights.device.type == device.type and indices.device.type == device.type
    assert torch.equal(indices.cpu(), expected_i)
    torch.testing.assert_close(weights.cpu(), expected_w, **CLOSE)


def test_moe_forward_backward_and_bias_update(device):
    torch.manual_seed(0)
    reference = DeepSeekMoE(dim=16, expert_dim=8, n_routed_experts=8, n_shared_experts=1, top_k=2)
    moe = DeepSeekMoE(dim=16, expert_dim=8, n_routed_experts=8, n_shared_experts=1, top_k=2)
    moe.load_state_dict(reference.state_dict())
    moe.to(device)
    x = torch.randn(4, 12, 16)
    x_device = x.to(device).requires_grad_()
    x.requires_grad_()
    reference(x).square().sum().backward()
    moe(x_device).square().sum().backward()
    torch.testing.assert_close(x_device.grad.cpu(), x.grad, **CLOSE)
    torch.testing.assert_close(moe.w_down.grad.cpu(), reference.w_down.grad, **CLOSE)
    torch.testing.assert_close(moe.load.cpu(), reference.load)
    used = moe.update_bias(0.001)
    reference.update_bias(0.001)
    assert moe.bias.device.type == device.type and moe.bias.dtype == torch.float32
    assert used.device.type == device.type
    torch.testing.assert_close(moe.bias.cpu(), reference.bias)


def test_load_maxvio_and_balance_losses(device):
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(2, 32, 8, generator=generator)
    scores_device = scores.to(device).requires_grad_()
    scores.requires_grad_()
    for loss_of in (lambda s: balance.sequence_balance_loss(s, 2, 0.01),
                    lambda s: balance.balance_loss(s.reshape(-1, 8), 2, 0.01)):
        scores.grad = scores_device.grad = None
        expected, got = loss_of(scores), loss_of(scores_device)
        expected.backward()
        got.backward()
        torch.testing.assert_close(got.detach().cpu(), expected.detach(), **CLOSE)
        torch.testing.assert_close(scores_device.grad.cpu(), scores.grad, **CLOSE)
    indices = scores.detach().topk(2, dim=-1).indices
    load = balance.expert_load(indices.to(device), 8)
    torch.testing.assert_close(load.cpu(), balance.expert_load(indices, 8))
    assert balance.max_violation(load) == pytest.approx(balance.max_violation(load.cpu()))


def test_mtp_losses(device):
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(11, (3, 9), generator=generator)
    logits = [torch.randn(3, 8 - k, 11, generator=generator) for k in (1, 2)]
    expected = mtp.mtp_loss(logits, tokens, 0.3)
    got = mtp.mtp_loss(_on(device, *logits), tokens.to(device), 0.3)
    torch.testing.assert_close(got.cpu(), expected, **CLOSE)
    main = mtp.mtp_depth_loss(torch.randn(3, 8, 11, generator=generator), tokens, 0)
    assert torch.isfinite(main)


def test_the_tiny_model_trains_and_samples(device):
    config = tiny_config()
    torch.manual_seed(0)
    reference = TinyDeepSeek(config)
    model = TinyDeepSeek(config)
    model.load_state_dict(reference.state_dict())
    model.to(device)
    tokens = torch.randint(config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(3))
    expected = reference.losses(tokens)
    got = model.losses(tokens.to(device))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.detach().cpu(), e.detach(), **CLOSE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sum(got).backward()
    optimizer.step()
    for moe in model.moe_layers():
        moe.update_bias(0.01)
        assert moe.bias.device.type == device.type and moe.bias.dtype == torch.float32
    sample = model.generate(tokens[0, :4], 8, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (12,) and sample.device.type == "cpu"


def test_the_trainer_runs_on_the_device(device, tmp_path, corpus):
    from course_lib.training.config import TrainConfig
    from course_lib.training.loop import Trainer

    config = tiny_config()
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=32, warmup_steps=1, eval_interval=3, eval_tokens=256)
    torch.manual_seed(0)
    trainer = Trainer(TinyDeepSeek(config), corpus, cfg, device)
    history = trainer.train(progress=False)
    assert trainer.device.type == device.type and len(history.loss) == 3
    assert all(torch.isfinite(torch.tensor(history.loss)))
    assert all(moe.bias.device.type == device.type and moe.bias.dtype == torch.float32
               for moe in trainer.model.moe_layers())
    trainer.save(tmp_path / "tiny.ckpt")
    resumed = Trainer.resume(tmp_path / "tiny.ckpt", corpus, device)
    assert resumed.step == 3 and next(resumed.model.parameters()).device.type == device.type
