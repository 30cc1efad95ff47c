"""The dispatch-plan checker of notebook 09: the reference passes, a stub is reported, and each mistake, written
the way a learner writes it, is rejected with its own hint; a learner's crash or a wrong type is explained, never
raised."""

from functools import partial

import torch

from checking import rejected_with
from course_lib.parallel.expert_parallel import placement
from course_lib.checks import check_dispatch_plan, outcome
from course_lib.checks.expert_parallel import EXAMPLE, MISTAKES


rejected_with = partial(rejected_with, check_dispatch_plan)


# --------------------------------------------------------------------------------------------- right answers
def loop_plan(indices, n_experts, world_size, ranks_per_node, rank):
    """A right answer written with loops and sets, rows in the order the tokens come."""
    experts_per_rank = n_experts // world_size
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        ranks = {e // experts_per_rank for e in experts}
        for node in sorted({r // ranks_per_node for r in ranks} - {rank // ranks_per_node}):
            sends.append([token, node])
            forward.append([node * ranks_per_node + j in ranks for j in range(ranks_per_node)])
    return torch.tensor(sends, dtype=torch.long).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def test_reference_and_other_right_answers_pass():
    assert outcome(check_dispatch_plan, placement.dispatch_plan) is True
    assert outcome(check_dispatch_plan, loop_plan) is True  # rows in another order, a plain tuple
    assert outcome(check_dispatch_plan, lambda *a: [t.int() for t in loop_plan(*a)]) is True  # int32, 0/1 ints


def test_the_example_of_the_notebook():
    plan = placement.dispatch_plan(*EXAMPLE)
    assert plan.sends.tolist() == [[0, 1], [1, 1], [3, 1], [0, 2], [1, 2], [3, 2]]
    assert plan.forward.tolist() == [[True, False], [False, True], [False, True], [True, False], [True, False],
                                     [True, True]]


def test_stub_returns_false(capsys):
    def stub(indices, n_experts, world_size, ranks_per_node, rank):
        raise NotImplementedError()
    assert outcome(check_dispatch_plan, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_each_mistake_is_named_by_its_own_output_on_the_example():
    """The first case tells every mistake apart: each mistake of the catalogue, as a learner's function, fails on
    the example with its own hint (not an earlier mistake's)."""
    for m in MISTAKES:
        message = rejected_with(m.fn, "the example above", m.hint)
        assert "Likely cause" in message and all(other.hint not in message for other in MISTAKES if other is not m)


# --------------------------------------------------------------------------------------------- mistakes
def per_pair(indices, n_experts, world_size, ranks_per_node, rank):
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        for e in experts:
            r = e // (n_experts // world_size)
            if r // ranks_per_node != rank // ranks_per_node:
                sends.append([token, r // ranks_per_node])
                forward.append([j == r % ranks_per_node for j in range(ranks_per_node)])
    return torch.tensor(sends).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def per_rank(indices, n_experts, world_size, ranks_per_node, rank):
    ranks = indices // (n_experts // world_size)
    hits = torch.zeros(len(indices), world_size, dtype=torch.bool).scatter_(1, ranks, True)
    hits[:, (rank // ranks_per_node) * ranks_per_node:(rank // ranks_per_node + 1) * ranks_per_node] = False
    token, dest = hits.nonzero().unbind(1)
    forward = torch.nn.functional.one_hot(dest % ranks_per_node, ranks_per_node).bool()
    return torch.stack([token, dest // ranks_per_node], 1), forward


def with_own_node(indices, n_experts, world_size, ranks_per_node, rank):
    experts_per_node = n_experts // (world_size // ranks_per_node)
    experts_per_rank = n_experts // world_size
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        for node in sorted({e // experts_per_node for e in experts}):
            sends.append([token, node])
            forward.append([any(e // experts_per_rank == node * ranks_per_node + j for e in experts)
                            for j in range(ranks_per_node)])
    return torch.tensor(sends).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def without_own_rank_only(indices, n_experts, world_size, ranks_per_node, rank):
    experts_per_rank = n_experts // world_size
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        ranks = {e // experts_per_rank for e in experts} - {rank}  # the token is already on its own rank
        for node in sorted({r // ranks_per_node for r in ranks}):
            sends.append([token, node])
            forward.append([node * ranks_per_node + j in ranks for j in range(ranks_per_node)])
    return torch.tensor(sends).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def node_is_rank(indices, n_experts, world_size, ranks_per_node, rank):
    node = indices // (n_experts // world_size)  # the node of each chosen expert
    hits = torch.zeros(len(indices), world_size, dtype=torch.bool).scatter_(1, node, True)
    hits[:, rank // ranks_per_node] = False
    nodes, token = hits.T.nonzero().unbind(1)
    forward = torch.zeros(len(token), ranks_per_node, dtype=torch.bool)
    return torch.stack([token, nodes], 1), forward


def node_by_ranks_per_node(indices, n_experts, world_size, ranks_per_node, rank):
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        nodes = {}
        for e in experts:
            node = e // ranks_per_node
            if node != rank // ranks_per_node:
                nodes.setdefault(node, [False] * ranks_per_node)[(e // (n_experts // world_size)) % ranks_per_node] = True
        for node, fwd in sorted(nodes.items()):
            sends.append([token, node])
            forward.append(fwd)
    return torch.tensor(sends).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def node_by_n_nodes(indices, n_experts, world_size, ranks_per_node, rank):
    n_nodes = world_size // ranks_per_node
    sends, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        for node in sorted({e // n_nodes for e in experts} - {rank // ranks_per_node}):
            sends.append([token, node])
            forward.append([any(e // n_nodes == node and (e // (n_experts // world_size)) % ranks_per_node == j
                                for e in experts) for j in range(ranks_per_node)])
    return torch.tensor(sends).reshape(-1, 2), torch.tensor(forward).reshape(-1, ranks_per_node)


def strided_local_rank(indices, n_experts, world_size, ranks_per_node, rank):
    sends, _ = loop_plan(indices, n_experts, world_size, ranks_per_node, rank)
    experts_per_node = n_experts // (world_size // ranks_per_node)
    forward = torch.zeros(len(sends), ranks_per_node, dtype=torch.bool)
    for s, (t, n) in enumerate(sends.tolist()):
        for e in indices[t].tolist():
            if e // experts_per_node == n:
                forward[s, e % ranks_per_node] = True
    return sends, forward


def forward_counts(indices, n_experts, world_size, ranks_per_node, rank):
    sends, _ = loop_plan(indices, n_experts, world_size, ranks_per_node, rank)
    experts_per_rank = n_experts // world_size
    forward = torch.zeros(len(sends), ranks_per_node, dtype=torch.long)
    for s, (t, n) in enumerate(sends.tolist()):
        for e in indices[t].tolist():
            r = e // experts_per_rank
            if r // ranks_per_node == n:
                forward[s, r % ranks_per_node] += 1
    return sends, forward


def test_mistakes_are_named():
    rejected_with(per_pair, "one row per (token, expert) PAIR")
    rejected_with(per_rank, "as DeepEP counts a token")
    rejected_with(with_own_node, "OWN node")
    rejected_with(without_own_rank_only, "only the token's own RANK")
    rejected_with(node_is_rank, "that is its RANK")
    rejected_with(node_by_ranks_per_node, "turns a RANK into its node")
    rejected_with(node_by_n_nodes, "e // n_nodes")
    rejected_with(strided_local_rank, "strided placement")
    rejected_with(forward_counts, "forgot the deduplication inside the node")


def test_the_count_against_the_traffic_accounting_comes_first():
    rejected_with(per_pair, "the layer's traffic accounting counts [0, 3, 3] distinct (token, node) pairs")


def test_a_crash_or_a_wrong_type_is_explained():
    rejected_with(lambda i, e, w, r, k: i, "a pair (sends, forward)")
    rejected_with(lambda i, e, w, r, k: (i.float()[:, :2], i), "integer tensor [S, 2]")
    rejected_with(lambda i, e, w, r, k: (loop_plan(i, e, w, r, k)[0], None), "bool tensor [S, ranks_per_node]")
    rejected_with(lambda i, e, w, r, k: (loop_plan(i, e, w, r, k)[0], torch.ones(1, r)), "bool tensor")
    rejected_with(lambda i, e, w, r, k: (loop_plan(i, e, w, r, k)[0].to(torch.complex64), None), "integer tensor")
    rejected_with(lambda i, e, w, r, k: (loop_plan(i, e, w, r, k)[0], loop_plan(i, e, w, r, k)[1].to(torch.complex64)),
                  "bool tensor")
    rejected_with(lambda i, e, w, r, k: (loop_plan(i, e, w, r, k)[0], loop_plan(i, e, w, r, k)[1][:, :1]), "shape")
    rejected_with(lambda i, e, w, r, k: (-loop_plan(i, e, w, r, k)[0], loop_plan(i, e, w, r, k)[1]), "outside")
    rejected_with(lambda i, e, w, r, k: (i[:, :2] + 100, torch.ones(len(i), r, dtype=torch.bool)), "outside [0, 2]")
    rejected_with(lambda i, e, w, r, k: i[100], "raised IndexError")


def test_an_input_changed_in_place_is_named():
    def sorts_in_place(indices, n_experts, world_size, ranks_per_node, rank):
        indices[:] = indices.sort(dim=1).values
        return placement.dispatch_plan(indices, n_experts, world_size, ranks_per_node, rank)
    rejected_with(sorts_in_place, "in place")
