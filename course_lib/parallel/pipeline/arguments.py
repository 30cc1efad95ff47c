"""The checks of the pipeline schedules' and the simulator's boundaries (``core.validation.boundary``): one
validator per boundary, named after it, taking its parameters by name; TypeError for a wrong type, ValueError for
a wrong value, with a message that names the argument, what was expected and what was given.
"""

from __future__ import annotations

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
