"""Checker for notebook 05: the training step with the auxiliary-loss-free bias update in the right place.

The learner writes ``train_step(model, optimizer, micro_batches, gamma) -> float`` (the mean loss over the
micro-batches); the checker runs it for three steps next to ``course_lib.training.step.train_step`` on copies of one tiny
model, with plain SGD (so the scale of the gradient shows in the weights), and after every step compares the
biases, the load counters and the weights. A difference is explained by the mistake it matches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from course_lib.training.step import train_step
from course_lib.checks.cases import Mistake
from course_lib.checks.comparison import format_value
from course_lib.checks.learner import call_learner
from course_lib.checks.verdict import CheckFailed, checker, expect
from course_lib.model.tiny import ModelConfig, TinyDeepSeek

_CONFIG = ModelConfig(vocab_size=16, dim=16, n_layers=2, n_heads=2, n_dense_layers=1, n_routed_experts=4,
                      n_shared_experts=1, top_k=2, expert_dim=8, max_seq_len=16)
_GAMMA = 0.01
_LR = 0.5


def _setup() -> tuple[TinyDeepSeek, list[list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyDeepSeek(_CONFIG)
    steps = [[torch.randint(16, (3, 9), generator=generator) for _ in range(2)] for _ in range(3)]
    return model, steps


def _copy(model: TinyDeepSeek) -> TinyDeepSeek:
    """A fresh model with the same weights and biases (deepcopy fails on the graph a training forward keeps)."""
    twin = TinyDeepSeek(model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def _micro_batch_loads(model: TinyDeepSeek, micro_batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The load of every micro-batch ([n_moe, n_experts] each) under the model's current weights and biases,
    without touching its counters (forwards under no_grad do not count)."""
    loads = []
    with torch.no_grad():
        for tokens in micro_batches:
            model.losses(tokens)
            loads.append(torch.stack([moe.last_load.clone() for moe in model.moe_layers()]))
    return loads


def _sign_rule(bias: torch.Tensor, load: torch.Tensor, rule: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return bias + _GAMMA * rule(load.mean(dim=-1, keepdim=True) - load)


def _once_per_micro_batch(before: torch.Tensor, loads: list[torch.Tensor]) -> torch.Tensor:
    for load in loads:
        before = _sign_rule(before, load, torch.sign)
    return before


# The mistakes of the update itself: Mistake(what the biases show, fn(biases before, micro-batch loads) -> the
# biases that mistake gives).
_BIAS_MISTAKES = [
    Mistake("the sign is reversed. An overloaded expert (load above the mean) must go DOWN: "
            "b <- b + gamma * sign(mean_load - load).",
            lambda before, loads: _sign_rule(before, sum(loads), lambda gap: -torch.sign(gap))),
    Mistake("a proportional step gamma * (mean - load). The rule takes only the SIGN of the gap, so every expert "
            "moves by exactly gamma ([V3] 2.1.2; [LF] found sign better than proportional).",
            lambda before, loads: _sign_rule(before, sum(loads), lambda gap: gap)),
    Mistake("they moved once per micro-batch. The bias is updated once per optimizer step, from the load of the "
            "whole step (all micro-batches): move the update out of the micro-batch loop.", _once_per_micro_batch),
    Mistake("they were updated from the load of the LAST micro-batch only (moe.last_load?). Use the load counted "
            "over the whole step: moe.update_bias(gamma) reads moe.load, which every training forward of the step "
            "added to.", lambda before, loads: _sign_rule(before, loads[-1], torch.sign)),
]


def _explain_bias(got: torch.Tensor, before: torch.Tensor, after_ref: torch.Tensor, previous_ref: torch.Tensor | None,
                  loads: list[torch.Tensor], counters: torch.Tensor, step: int) -> str:
    """Name the mistake behind biases ``got`` [n_moe, n_experts] that differ from the reference ``after_ref``."""
    close = lambda a, b: torch.allclose(a, b, atol=1e-6)  # noqa: E731
    seen = f"after step {step} your biases are {format_value(got[0])} (first MoE layer), expected {format_value(after_ref[0])}"
    if previous_ref is not None and close(got, previous_ref) and not close(got, before):
        return (f"{seen}, which is what they should have been one step EARLIER. Your update runs before the "
                f"forward pass, so it uses the previous step's load. Update the biases at the end of the step, after "
                f"optimizer.step(), from the load this step counted.")
    if close(got, before):
        if counters.sum() > 0:
            return (f"{seen}: they did not change, and moe.load still holds {format_value(counters[0])}. The update "
                    f"never ran, or ran before the forward pass while the count was still empty. Call "
                    f"moe.update_bias(gamma) for every layer in model.moe_layers(), after optimizer.step().")
        return (f"{seen}: they did not change and nothing was counted. The load is counted only by TRAINING forwards "
                f"(model.train(), gradients on): did your forward run under model.eval() or torch.no_grad()?")
    for mistake in _BIAS_MISTAKES:
        if close(got, mistake.fn(before, loads)):
            return f"{seen}: {mistake.hint}"
    return (f"{seen}. Expected b + gamma * sign(mean(load) - load) with the load of this step's micro-batches, "
            f"applied once after optimizer.step().")


@checker("train_step")
def check_train_step(fn: Callable[..., float]) -> str:
    """Check ``fn(model, optimizer, micro_batches, gamma) -> mean loss`` against ``train_step`` with
    loss-free balancing, step by step."""
    reference, steps = _setup()
    learner = _copy(reference)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=_LR)
    opt = torch.optim.SGD(learner.parameters(), lr=_LR)
    previous_ref = None
    for step, micro_batches in enumerate(steps, start=1):
        before = torch.stack([moe.bias.clone() for moe in learner.moe_layers()])
        loads = _micro_batch_loads(_copy(learner), micro_batches)
        weights_before = [p.detach().clone() for p in learner.parameters()]
        expected = train_step(reference, ref_opt, [t.clone() for t in micro_batches], balance_mode="loss_free",
                                    gamma=_GAMMA)
        got = call_learner(fn, learner, opt, [t.clone() for t in micro_batches], _GAMMA, name="Your train_step",
                           label=f"step {step}")
        moes = learner.moe_layers()
        expect(learner.training, "After your train_step the model is in eval mode. Training steps run in "
                                 "training mode (model.train()): only training forwards count the experts' load.")
        in_optimizer = any(p is moe.bias for group in opt.param_groups for p in group["params"] for moe in moes)
        expect(not in_optimizer and not any(moe.bias.requires_grad for moe in moes),
               "Your train_step gave the bias to the optimizer (or made it require gradients). The bias is not "
               "trained by gradient descent: it is state, changed only by the sign rule outside the optimizer.")
        biases = torch.stack([moe.bias.detach() for moe in moes])
        ref_biases = torch.stack([moe.bias for moe in reference.moe_layers()])
        counters = torch.stack([moe.load.clone() for moe in moes])
        if not torch.allclose(biases, ref_biases, atol=1e-6):
            raise CheckFailed(_explain_bias(biases, before, ref_biases, previous_ref, loads, counters, step))
        expect(float(counters.sum()) == 0,
               f"After step {step} the biases are right, but moe.load still holds {format_value(counters[0])}. The "
               f"count must start from zero at every step: moe.update_bias(gamma) resets it (if you wrote the rule "
               f"by hand, zero moe.load after using it).")
        _expect_same_weights(learner, reference, weights_before, len(micro_batches), step)
        expect(isinstance(got, (float, int)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
               f"Your train_step returned {got!r:.60}; return the step's mean loss as a float (loss.item()).")
        got = float(got)
        if abs(got - expected.loss * len(micro_batches)) < 1e-4 and len(micro_batches) > 1:
            raise CheckFailed(f"At step {step} you returned {got:.4f}, the SUM of the micro-batch losses; return "
                                 f"their mean, {expected.loss:.4f}.")
        expect(abs(got - expected.loss) < 1e-4,
               f"At step {step} you returned {got:.4f}, but the mean loss over the micro-batches is {expected.loss:.4f}.")
        previous_ref = ref_biases.clone()
    return "three steps of two micro-batches give the reference's weights, biases and losses"


def _expect_same_weights(learner: TinyDeepSeek, reference: TinyDeepSeek, before: list[torch.Tensor], n_micro: int,
                         step: int) -> None:
    got = [p.detach() for p in learner.parameters()]
    want = [p.detach() for p in reference.parameters()]
    if all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want)):
        return
    got_delta = torch.cat([(g - b).flatten() for g, b in zip(got, before)])
    want_delta = torch.cat([(w - b).flatten() for w, b in zip(want, before)])
    if float(got_delta.abs().max()) == 0:
        raise CheckFailed(f"After step {step} the weights did not change: call optimizer.step() after the "
                             f"backward passes.")
    if torch.allclose(got_delta, n_micro * want_delta, atol=1e-5):
        raise CheckFailed(f"At step {step} your weights moved {n_micro}x too far: the gradient is the SUM over the "
                             f"{n_micro} micro-batches. Divide each micro-batch's loss by len(micro_batches) before "
                             f"backward(), so the step follows the mean.")
    if step > 1:
        raise CheckFailed(f"Step {step} moved the weights differently from the reference although the earlier "
                             f"steps were right: gradients left over from the previous step were added. Call "
                             f"optimizer.zero_grad() at the start of every step.")
    raise CheckFailed(f"After step {step} your weights differ from the reference's. One optimizer.step() per "
                         f"training step, after the backward passes of all micro-batches; the loss is main + MTP "
                         f"from model.losses(tokens).")
