"""State after a failure (issue 9 item 5): an exception anywhere inside ``train_step`` leaves the weights, the
optimizer state and every MoE layer's routing state (bias, load) as they were before the step; the trainer also
redraws the failed step's batches. Plus: a model deep-copies after a training forward, and the package's result
objects have short reprs."""

import copy
import dataclasses

import pytest
import torch

from course_lib.moe import balance, toy as toy_moe
from course_lib.training import data
from course_lib.training.step import train_step, TrainingDiverged
from course_lib.training.config import History, TrainConfig
from course_lib.training.loop import Trainer
from course_lib.precision import linear
from course_lib.model.tiny import TinyDeepSeek
from tiny_models import tiny_config

TINY = tiny_config(n_layers=3)
FAST = TrainConfig(steps=6, batch_size=4, seq_len=16, warmup_steps=2, eval_interval=6, eval_tokens=256)


class Boom(Exception):
    pass


def batches(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (4, 17), generator=g) for _ in range(n)]


def snapshot(model, optimizer):
    return (copy.deepcopy(model.state_dict()), [m.load.clone() for m in model.moe_layers()],
            copy.deepcopy(optimizer.state_dict()))


def equal(a, b):
    return torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def assert_same(a, b):
    (weights_a, loads_a, opt_a), (weights_b, loads_b, opt_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:  # the weights and each MoE layer's bias
        assert equal(weights_a[key], weights_b[key]), key
    for x, y in zip(loads_a, loads_b):
        assert torch.equal(x, y)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        for key in opt_a["state"][i]:
            assert equal(opt_a["state"][i][key], opt_b["state"][i][key]), (i, key)


def nan_loss(model, optimizer):
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    return lambda: None  # nothing to undo: the snapshot is taken after the weight is set


def nan_gradient(model, optimizer):
    handle = model.moe_layers()[-1].w_up.register_hook(lambda grad: grad * float("nan"))
    return handle.remove


def forward_hook_raises(model, optimizer):  # after the first MoE layer counted its load
    def hook(module, args, output):
        raise Boom("from a forward hook")
    handle = model.moe_layers()[-1].register_forward_hook(hook)
    return handle.remove


def keyboard_interrupt_in_forward(model, optimizer):
    def hook(module, args, output):
        raise KeyboardInterrupt
    handle = model.blocks[-1].register_forward_hook(hook)
    return handle.remove


def backward_raises(model, optimizer):
    def hook(grad):
        raise Boom("from a backward hook")
    handle = model.embed.weight.register_hook(hook)
    return handle.remove


def optimizer_step_raises_after_updating(model, optimizer):
    real = optimizer.step

    def step(*args, **kwargs):
        real(*args, **kwargs)  # the weights and Adam's moments change, then:
        raise Boom("after the optimizer step")
    optimizer.step = step
    return lambda: setattr(optimizer, "step", real)


def bias_update_raises_in_the_last_layer(model, optimizer):  # the first layers' biases are already updated
    layer = model.moe_layers()[-1]

    def update_bias(gamma=0.001):
        raise Boom("in update_bias")
    layer.update_bias = update_bias
    return lambda: delattr(layer, "update_bias")


FAILURES = [nan_loss, nan_gradient, forward_hook_raises, keyboard_interrupt_in_forward, backward_raises,
            optimizer_step_raises_after_updating, bias_update_raises_in_the_last_layer]


@pytest.mark.parametrize("fail", FAILURES, ids=[f.__name__ for f in FAILURES])
def test_a_failed_step_leaves_weights_optimizer_and_routing_state_as_before(fail):
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer, batches(1), gamma=0.01)  # some optimizer state and a moved bias
    for i, moe in enumerate(model.moe_layers()):
        moe.load.fill_(float(i + 3))  # counts from forwards outside a step are kept, not mixed with the failed step's
    undo = fail(model, optimizer)
    before = snapshot(model, optimizer)
    with pytest.raises((Boom, KeyboardInterrupt, TrainingDiverged)):
        train_step(model, optimizer, batches(2), gamma=0.01, balance_mode="loss_free")
    assert_same(snapshot(model, optimizer), before)
    assert all(p.grad is None for p in model.parameters())
    undo()
    if fail is nan_loss:
        return
    # the next step is the one the model would have taken without the failure
    twin_model = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin_model.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict would share the moments
    a = train_step(model, optimizer, batches(3), gamma=0.01)
    b = train_step(twin_model, twin_opt, batches(3), gamma=0.01)
    assert a.loss == b.loss and torch.equal(a.loads, b.loads)
    assert_same(snapshot(model, optimizer), snapshot(twin_model, twin_opt))


DIVERGED_WEIGHTS = [  # a weight set to NaN or inf: before every layer, an FP8 layer's own weight, after every layer
    ("embed.weight", float("nan")), ("blocks.1.attn.qkv.weight", float("inf")), ("head.weight", float("nan"))]


def test_a_failed_first_step_leaves_the_optimizer_without_state():
    """The step that would have made the optimizer's state (its first) fails after AdamW's update: the state is
    dropped again, and the next step is the first step of a fresh optimizer."""
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    twin_model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    undo = optimizer_step_raises_after_updating(model, optimizer)
    before = snapshot(model, optimizer)
    with pytest.raises(Boom):
        train_step(model, optimizer, batches(2), gamma=0.01)
    assert_same(snapshot(model, optimizer), before)
    assert not optimizer.state
    undo()
    a = train_step(model, optimizer, batches(3), gamma=0.01)
    b = train_step(twin_model, torch.optim.AdamW(twin_model.parameters(), lr=1e-2), batches(3), gamma=0.01)
    assert a.loss == b.loss and a.grad_norm == b.grad_norm
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "fp8"])
@pytest.mark.parametrize("name, value", DIVERGED_WEIGHTS, ids=[n for n, _ in DIVERGED_WEIGHTS])
def test_divergence_is_training_diverged_in_every_precision(precision, name, value):
    """NaN or inf anywhere surfaces as TrainingDiverged (what the Trainer and the CLI's exit status 3 catch), and the
    state is as before. Failed before: the ValueError of a layer's check (the MoE layer's hidden states, FP8's
    quantisation in the forward, or in the backward of a NaN loss)."""
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    if precision == "fp8":
        linear.to_fp8(model)
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer, batches(1), dtype=dtype)
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[:4] = value
    before = snapshot(model, optimizer)
    with pytest.raises(TrainingDiverged):
        train_step(model, optimizer, batches(2), dtype=dtype)
    assert_same(snapshot(model, optimizer), before)
    assert all(p.grad is None for p in model.parameters())


def test_the_trainer_redraws_the_batches_of_a_failed_step(corpus):
    torch.manual_seed(0)
    straight = Trainer(TinyDeepSeek(TINY), corpus, FAST, "cpu")
    straight.train(progress=False)
    torch.manual_seed(0)
    trainer = Trainer(TinyDeepSeek(TINY), corpus, FAST, "cpu")
    trainer.train(3, progress=False)
    handle = trainer.model.moe_layers()[0].register_forward_hook(lambda *args: (_ for _ in ()).throw(Boom("once")))
    with pytest.raises(Boom):
        trainer.train(progress=False)
    handle.remove()
    assert trainer.step == 3
    trainer.train(progress=False)
    assert trainer.history.loss == straight.history.loss and trainer.history.loads == straight.history.loads
    assert trainer.history.val_loss == straight.history.val_loss


def test_a_model_deep_copies_after_a_training_forward_and_balance_losses_keep_their_gradient():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY).train()
    model.losses(batches(0, 1)[0])
    twin = copy.deepcopy(model)  # failed before: last_scores kept its autograd graph
    moe, twin_moe = model.moe_layers()[0], twin.moe_layers()[0]
    assert torch.equal(twin_moe.last_scores, moe.last_scores) and twin_moe.last_scores.grad_fn is None
    assert moe.last_scores.grad_fn is not None  # the layer itself keeps the graph
    scores = moe.last_scores.reshape(-1, moe.n_routed_experts)
    (balance.balance_loss(scores, moe.top_k, 0.01) + balance.sequence_balance_loss(
        moe.last_scores, moe.top_k, 0.01)).backward()
    assert moe.centroids.grad is not None and moe.centroids.grad.abs().sum() > 0
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


def test_result_objects_have_short_reprs(corpus):
    torch.manual_seed(0)
    trainer = Trainer(TinyDeepSeek(TINY), corpus, dataclasses.replace(FAST, steps=2, eval_interval=2), "cpu")
    history = trainer.train(progress=False)
    step = train_step(trainer.model, trainer.optimizer, batches(0, 1))
    objects = {
        "History(steps=2, last loss": history,
        "History(steps=0)": History(),
        "StepResult(loss=": step,
        "Trainer(step 2 of 2, loss_free balancing, float32 on cpu": trainer,
        "TrainHistory(mode='loss_free', steps=5": toy_moe.train_toy_moe("loss_free", 5, n_eval_tokens=64),
        "SimulationHistory(steps=5, n_experts=16": toy_moe.simulate_bias_balancing(5),
        "Corpus(": corpus,
        "Corpus(": data.synthetic_task(200),
        "CharTokenizer(vocab_size=96": corpus.tokenizer,
    }
    for start, obj in objects.items():
        text = repr(obj)
        assert text.startswith(start), text
        assert len(text.splitlines()) <= 3 and len(text) <= 300, text
        assert "tensor(" not in text, text
    assert "val_loss" in repr(history) and "at step 2" in repr(history)
    assert "domains ['addition'" in repr(data.synthetic_task(200))
