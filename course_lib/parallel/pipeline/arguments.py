"""The checks of the pipeline schedules' and the simulator's boundaries (``core.validation.boundary``): one
validator per boundary, named after it, taking its parameters by name; TypeError for a wrong type, ValueError for
a wrong value, with a message that names the argument, what was expected and what was given.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import check_int, check_number


def check_sizes(n_stages: int, n_micro_batches: int, name: str, min_micro_batches: int = 1,
                even: bool = False) -> None:
    """Raise TypeError unless both sizes are ints; ValueError for sizes < 1, fewer than ``min_micro_batches``
    micro-batches, or (``even``) an odd stage count."""
    check_int("n_stages", n_stages, 1)
    check_int("n_micro_batches", n_micro_batches, 1)
    if even and n_stages % 2:
        raise ValueError(f"{name} needs an even n_stages (each rank holds a stage from each end of the pipeline), "
                         f"got {n_stages}")
    if n_micro_batches < min_micro_batches:
        raise ValueError(f"{name} with n_stages={n_stages} needs n_micro_batches >= {min_micro_batches}, got "
                         f"{n_micro_batches}")


def gpipe(n_stages: int, n_micro_batches: int) -> None:
    check_sizes(n_stages, n_micro_batches, "GPipe")


def one_f_one_b(n_stages: int, n_micro_batches: int) -> None:
    check_sizes(n_stages, n_micro_batches, "1F1B", min_micro_batches=n_stages)


def zb1p(n_stages: int, n_micro_batches: int) -> None:
    check_sizes(n_stages, n_micro_batches, "ZB1P", min_micro_batches=n_stages)


def dualpipe(n_stages: int, n_micro_batches: int) -> None:
    check_sizes(n_stages, n_micro_batches, "DualPipe", min_micro_batches=2 * n_stages, even=True)
    if n_micro_batches % 2:
        raise ValueError(f"DualPipe needs an even n_micro_batches (half enter from each end), got {n_micro_batches}")


def dualpipev(n_stages: int, n_micro_batches: int) -> None:
    check_sizes(n_stages, n_micro_batches, "DualPipeV", min_micro_batches=n_stages, even=True)


def costs(F: float, B: float, W: float, F_and_B: float | None = None, send: float = 0.0) -> None:
    """Raise TypeError for a cost that is not a number, ValueError for a negative or non-finite one, or a weight
    gradient W longer than the full backward B it is part of."""
    for name, value in (("F", F), ("B", B), ("W", W), ("send", send)):
        check_number(name, value, 0.0)
    if F_and_B is not None:
        check_number("F_and_B", F_and_B, 0.0)
    if W > B:
        raise ValueError(f"W (the weights' part of the backward) must be <= the full backward B, got W={W}, B={B}")


def simulate(schedule: object, costs: object) -> None:
    from course_lib.parallel.pipeline.schedules import Schedule
    from course_lib.parallel.pipeline.simulator import Costs
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (from gpipe, one_f_one_b, zb1p, dualpipe or dualpipev), got "
                        f"{type(schedule).__name__}")
    if not isinstance(costs, Costs):
        raise TypeError(f"costs must be a Costs(F, B, W, F_and_B, send), got {type(costs).__name__}")


# --------------------------------------------------------------------------------------------- the real pipeline
def stage_module(model: object, stage: int, n_stages: int) -> None:
    """``stages.StageModule``: a TinyDeepSeek without MTP modules, a stage in [0, n_stages), a block per stage."""
    from course_lib.model.tiny import TinyDeepSeek
    if not isinstance(model, TinyDeepSeek):
        raise TypeError(f"model must be a course_lib.model.tiny.TinyDeepSeek, got {type(model).__name__}")
    check_int("n_stages", n_stages, 1)
    check_int("stage", stage, 0)
    if stage >= n_stages:
        raise ValueError(f"stage must lie in [0, n_stages={n_stages}), got {stage}")
    if model.config.n_layers < n_stages:
        raise ValueError(f"n_stages={n_stages} stages need at least as many blocks, the model has n_layers="
                         f"{model.config.n_layers}")
    if model.config.mtp_depth:
        raise ValueError(f"the pipelined model is the main model: build it with mtp_depth=0, got mtp_depth="
                         f"{model.config.mtp_depth} (the MTP modules share the embedding of stage 0 and the head of "
                         f"the last stage)")


def check_windows(model: object, tokens: object) -> None:
    """Raise TypeError / ValueError unless tokens is int64 [B >= 1, T + 1 >= 2] of the model's vocabulary."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
        raise TypeError(f"tokens must be an int64 tensor [B, T + 1] of windows, got {tokens!r:.80}")
    if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B >= 1, T + 1 >= 2], got shape {list(tokens.shape)}")
    vocab = model.config.vocab_size
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"tokens must lie in [0, vocab_size={vocab}), got {int(tokens.min())}..{int(tokens.max())}")


def reference_step(model: object, tokens: object, n_micro_batches: int) -> None:
    stage_module(model, 0, 1)
    check_windows(model, tokens)
    check_int("n_micro_batches", n_micro_batches, 1)
    if tokens.shape[0] % n_micro_batches:
        raise ValueError(f"the batch of {tokens.shape[0]} windows must split into n_micro_batches="
                         f"{n_micro_batches} micro-batches of equal size")


def run_pipeline(model: object, tokens: object, schedule: str, n_ranks: int, n_micro_batches: int,
                 timeout_s: float, deadline_s: float) -> None:
    from course_lib.parallel.pipeline.torch_orders import TORCH_SCHEDULES
    if schedule not in TORCH_SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(TORCH_SCHEDULES)}, got {schedule!r}")
    check_int("n_ranks", n_ranks, 1)
    check_int("n_micro_batches", n_micro_batches, 1)
    n_stages = n_ranks * TORCH_SCHEDULES[schedule][1]
    if schedule == "DualPipeV":
        dualpipev(n_stages, n_micro_batches)
    else:
        one_f_one_b(n_stages, n_micro_batches)
    if schedule == "ZB1P" and n_micro_batches % n_stages:
        raise ValueError(f"torch's ScheduleInterleavedZeroBubble needs n_micro_batches divisible by n_stages="
                         f"{n_stages}, got {n_micro_batches}")
    stage_module(model, n_stages - 1, n_stages)
    check_windows(model, tokens)
    if tokens.shape[0] % n_micro_batches:
        raise ValueError(f"the batch of {tokens.shape[0]} windows must split into n_micro_batches="
                         f"{n_micro_batches} micro-batches of equal size (their mean loss is then the batch's)")
    if not (timeout_s > 0 and deadline_s > 0):
        raise ValueError(f"timeout_s and deadline_s must be > 0, got {timeout_s} and {deadline_s}")


def gantt(timeline: object, ax: object, title: object, labels: object) -> None:
    from course_lib.parallel.pipeline.simulator import Timeline
    if not isinstance(timeline, Timeline):
        raise TypeError(f"timeline must be a simulator.Timeline (from simulate), got {type(timeline).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
