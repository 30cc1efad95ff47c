"""Notebook 05's checker: the reference step passes, a stub is reported, and each mistake of placing the bias
update (written the way a learner writes it) is rejected with its own hint."""

import pytest
import torch

from checking import stub
from course_lib.checks import CheckFailed, check_train_step, outcome


def right(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        main, mtp = model.losses(tokens)
        loss = (main + mtp) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    for moe in model.moe_layers():
        moe.update_bias(gamma)
    return total


def bias_before_the_forward(model, optimizer, micro_batches, gamma):
    for moe in model.moe_layers():
        moe.update_bias(gamma)
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


def bias_between_forward_and_backward_of_each_micro_batch(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        for moe in model.moe_layers():
            moe.update_bias(gamma)
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


def bias_in_the_optimizer(model, optimizer, micro_batches, gamma):
    for moe in model.moe_layers():
        if not moe.bias.requires_grad:
            moe.bias.requires_grad_(True)
            optimizer.add_param_group({"params": [moe.bias]})
    return right(model, optimizer, micro_batches, gamma)


def forward_in_eval_mode(model, optimizer, micro_batches, gamma):
    model.eval()
    total = right(model, optimizer, micro_batches, gamma)
    model.train()
    return total


def bias_from_the_last_forward(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    for moe in model.moe_layers():
        load = moe.last_load
        moe.bias += gamma * torch.sign(load.mean() - load)
        moe.load.zero_()
    return total


def hand_written_rule_without_reset(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    for moe in model.moe_layers():
        moe.bias += gamma * torch.sign(moe.load.mean() - moe.load)
    return total


def reversed_sign(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    for moe in model.moe_layers():
        moe.bias += gamma * torch.sign(moe.load - moe.load.mean())
        moe.load.zero_()
    return total


def no_zero_grad(model, optimizer, micro_batches, gamma):
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens)) / len(micro_batches)
        loss.backward()
        total += loss.item()
    optimizer.step()
    for moe in model.moe_layers():
        moe.update_bias(gamma)
    return total


def loss_not_averaged(model, optimizer, micro_batches, gamma):
    optimizer.zero_grad()
    total = 0.0
    for tokens in micro_batches:
        loss = sum(model.losses(tokens))
        loss.backward()
        total += loss.item() / len(micro_batches)
    optimizer.step()
    for moe in model.moe_layers():
        moe.update_bias(gamma)
    return total


def test_reference_passes():
    assert outcome(check_train_step, right) is True


def test_stub_returns_false(capsys):
    assert outcome(check_train_step, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (bias_before_the_forward, "before the forward pass"),
    (bias_between_forward_and_backward_of_each_micro_batch, "once per micro-batch"),
    (bias_in_the_optimizer, "gave the bias to the optimizer"),
    (forward_in_eval_mode, "model.eval()"),
    (bias_from_the_last_forward, "LAST micro-batch only"),
    (hand_written_rule_without_reset, "moe.load still holds"),
    (reversed_sign, "sign is reversed"),
    (no_zero_grad, "optimizer.zero_grad()"),
    (loss_not_averaged, "2x too far"),
])
def test_each_mistake_gets_its_hint(wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_train_step(wrong)
