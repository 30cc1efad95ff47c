"""Notebook 13's checkers: the references pass, a stub is reported, and each mistake of issue 23's catalogue, written
the way a learner writes it (plain loops, not the checker's own models), is rejected with its hint."""

import pytest

from checking import rejected_with, stub
from course_lib.checks import check_pack, check_replicate, outcome
from course_lib.checks.eplb import pack, replicate


def learner_replicate(load, num_replicas, *, total_load=False):
    copies = [1] * len(load)
    for _ in range(num_replicas - len(load)):
        best = 0
        for e in range(1, len(load)):
            mine = load[e] if total_load else load[e] / copies[e]
            theirs = load[best] if total_load else load[best] / copies[best]
            if mine > theirs:
                best = e
        copies[best] += 1
    return copies


def learner_pack(load, copies, num_gpus, *, any_room=False, lightest_first=False, apart=False):
    replicas = []
    for e, n in enumerate(copies):
        replicas += [(load[e] / n, e)] * n
    replicas.sort(key=lambda r: r[0], reverse=not lightest_first)
    slots = len(replicas) // num_gpus
    gpus, totals = [[] for _ in range(num_gpus)], [0.0] * num_gpus
    for share, e in replicas:
        candidates = [g for g in range(num_gpus) if any_room or len(gpus[g]) < slots]
        if apart and any(e not in gpus[g] for g in candidates):
            candidates = [g for g in candidates if e not in gpus[g]]
        g = min(candidates, key=lambda g: totals[g])
        gpus[g].append(e)
        totals[g] += share
    return gpus


def test_references_pass():
    assert outcome(check_replicate, replicate) is True
    assert outcome(check_replicate, learner_replicate) is True
    assert outcome(check_pack, pack) is True
    assert outcome(check_pack, learner_pack) is True
    assert outcome(check_pack, lambda *args: [gpu[::-1] for gpu in learner_pack(*args)][::-1]) is True  # any order


def test_stubs_return_false(capsys):
    assert outcome(check_replicate, stub) is False
    assert outcome(check_pack, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 2


def test_replicating_by_total_load_is_named():
    rejected_with(check_replicate, lambda load, r: learner_replicate(load, r, total_load=True),
                  "TOTAL load", "PER REPLICA")


@pytest.mark.parametrize("flag, hint", [
    ("any_room", "unequal experts per GPU"),
    ("lightest_first", "packing lightest-first"),
    ("apart", "two replicas of one expert are kept off the same GPU"),
])
def test_packing_mistakes_are_named(flag, hint):
    rejected_with(check_pack, lambda *args: learner_pack(*args, **{flag: True}), hint)


def test_a_placement_that_is_not_lists_of_ints_is_explained():
    rejected_with(check_pack, lambda load, copies, g: "GPU 0: 1, 2", "a list of each GPU's experts")


def test_numpy_and_tensor_answers_pass():
    """A right answer as a NumPy array, NumPy ints or a tensor is right: the checker compares values, not types."""
    import numpy as np
    import torch

    assert outcome(check_replicate, lambda load, r: np.array(learner_replicate(load, r))) is True
    assert outcome(check_replicate, lambda load, r: [np.int64(c) for c in learner_replicate(load, r)]) is True
    assert outcome(check_pack, lambda *args: np.array(learner_pack(*args))) is True
    assert outcome(check_pack, lambda *args: torch.tensor(learner_pack(*args))) is True


def test_float_copies_and_sets_of_experts_are_explained():
    rejected_with(check_replicate, lambda load, r: [float(c) for c in learner_replicate(load, r)], "a list of ints")
    rejected_with(check_pack, lambda *args: [set(gpu) for gpu in learner_pack(*args)],
                  "a set keeps one copy of an expert")
