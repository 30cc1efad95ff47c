"""Checker for notebook 09: the node-deduplicated dispatch plan ([V3] 3.2.2).

The design the checker holds the learner to (stated in the notebook and in ``placement.dispatch_plan``):
rank r holds the experts r * E_r ... (r + 1) * E_r - 1 (E_r = n_experts / world_size), a node is ``ranks_per_node``
consecutive ranks; a token crosses InfiniBand once per REMOTE node that holds at least one of its experts (its
own node is reached over NVLink alone), and inside that node it is forwarded once to each rank holding at least
one of its experts. The number of (token, node) rows towards each node is checked against the layer's own traffic
accounting (``traffic.traffic(...).node_rows``), the rows and the forwarding map against the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib.parallel.expert_parallel import placement, traffic
from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import describe_value
from course_lib.checks.learner import call_learner, clone_args, expect_inputs_unchanged
from course_lib.checks.verdict import CheckFailed, checker


# --------------------------------------------------------------------------------------------- reading a plan
def _as_plan(value: Any) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A plan as (sends int64 [S, 2], forward int64 [S, R]) with its rows sorted by (node, token), or a sentence
    saying why the value is not a plan. forward may hold counts (kept as they are, to be compared)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return f"your function returned {describe_value(value)}, but a pair (sends, forward) of tensors was expected"
    sends, forward = value
    if (not isinstance(sends, torch.Tensor) or sends.is_floating_point() or sends.is_complex()
            or sends.dtype == torch.bool or sends.dim() != 2 or sends.shape[1] != 2):
        return (f"sends is {describe_value(sends)}, but an integer tensor [S, 2] of (token, node) rows was "
                f"expected")
    if (not isinstance(forward, torch.Tensor) or forward.is_floating_point() or forward.is_complex()
            or forward.dim() != 2 or forward.shape[0] != sends.shape[0]):
        return (f"forward is {describe_value(forward)}, but a bool tensor [S, ranks_per_node] with one row per "
                f"row of sends (S = {sends.shape[0]}) was expected")
    sends, forward = sends.detach().cpu().long(), forward.detach().cpu().long()
    order = sorted(range(len(sends)), key=lambda s: (int(sends[s, 1]), int(sends[s, 0])))
    return sends[order], forward[order]


def _row(sends: torch.Tensor, s: int) -> str:
    return f"(token {int(sends[s, 0])}, node {int(sends[s, 1])})"


def _compare_plans(got: Any, expected: Any) -> str | None:
    """None when two plans hold the same rows (in any order) with the same forwarding, else what differs."""
    got_plan, expected_plan = _as_plan(got), _as_plan(expected)
    if isinstance(got_plan, str):
        return got_plan
    if isinstance(expected_plan, str):  # a mistake's model that does not apply here
        return expected_plan
    (sends, forward), (want_sends, want_forward) = got_plan, expected_plan
    rows = [tuple(r) for r in sends.tolist()]
    want_rows = [tuple(r) for r in want_sends.tolist()]
    if rows != want_rows:
        repeated = next((r for r in rows if rows.count(r) > 1), None)
        if repeated is not None:
            return (f"sends holds the row (token {repeated[0]}, node {repeated[1]}) {rows.count(repeated)} times, "
                    f"but each (token, node) pair crosses once")
        extra = next((r for r in rows if r not in want_rows), None)
        if extra is not None:
            return f"sends holds the row (token {extra[0]}, node {extra[1]}), which should not be there"
        missing = next((r for r in want_rows if r not in rows), None)
        if missing is not None:
            return f"sends lacks the row (token {missing[0]}, node {missing[1]})"
        return f"sends holds {len(rows)} rows, but {len(want_rows)} were expected"
    if forward.shape != want_forward.shape:
        return (f"forward has shape {list(forward.shape)}, but [{len(rows)}, {want_forward.shape[1]}] was "
                f"expected (one column per rank of a node)")
    for s in range(len(rows)):
        if not torch.equal(forward[s], want_forward[s]):
            return (f"for the row {_row(sends, s)}, forward is {forward[s].tolist()}, but it should be "
                    f"{want_forward[s].bool().tolist()}")
    return None


# --------------------------------------------------------------------------------------------- mistakes
def _plan_from(token: torch.Tensor, node: torch.Tensor, local: torch.Tensor, keep: torch.Tensor,
               ranks_per_node: int, dedup_nodes: bool = True, dedup_ranks: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A plan from per-pair (token, node, local rank) triples, keeping the pairs where ``keep`` holds."""
    token, node, local = token[keep], node[keep], local[keep]
    rows: dict[tuple[int, int], list[int]] = {}
    sends, forward = [], []
    for t, n, j in zip(token.tolist(), node.tolist(), local.tolist()):
        if dedup_nodes and (t, n) in rows:
            counts = rows[(t, n)]
        else:
            counts = [0] * ranks_per_node
            rows[(t, n)] = counts
            sends.append((t, n))
            forward.append(counts)
        counts[j] = min(counts[j] + 1, 1) if dedup_ranks else counts[j] + 1
    return (torch.tensor(sends, dtype=torch.long).reshape(-1, 2),
            torch.tensor(forward, dtype=torch.long).reshape(-1, ranks_per_node))


def _pairs(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """token, node, local rank of every (token, expert) pair, flattened."""
    ranks = indices.reshape(-1) // (n_experts // world_size)
    token = torch.arange(indices.shape[0]).repeat_interleave(indices.shape[1])
    return token, ranks // ranks_per_node, ranks % ranks_per_node


def _per_pair(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, local = _pairs(indices, n_experts, world_size, ranks_per_node)
    return _plan_from(token, node, local, node != rank // ranks_per_node, ranks_per_node, dedup_nodes=False)


def _per_rank(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, local = _pairs(indices, n_experts, world_size, ranks_per_node)
    keep = node != rank // ranks_per_node
    rows = {(t, n, j) for t, n, j in zip(token[keep].tolist(), node[keep].tolist(), local[keep].tolist())}
    sends = torch.tensor([(t, n) for t, n, _ in sorted(rows)], dtype=torch.long).reshape(-1, 2)
    forward = torch.zeros(len(rows), ranks_per_node, dtype=torch.long)
    for s, (_, _, j) in enumerate(sorted(rows)):
        forward[s, j] = 1
    return sends, forward


def _own_node_included(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, local = _pairs(indices, n_experts, world_size, ranks_per_node)
    return _plan_from(token, node, local, torch.ones_like(node, dtype=torch.bool), ranks_per_node)


def _own_rank_excluded(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, local = _pairs(indices, n_experts, world_size, ranks_per_node)
    keep = node * ranks_per_node + local != rank
    return _plan_from(token, node, local, keep, ranks_per_node)


def _node_of_expert_by(divisor: Callable[[int, int, int], int]):
    def wrong(indices, n_experts, world_size, ranks_per_node, rank):
        token, _, local = _pairs(indices, n_experts, world_size, ranks_per_node)
        node = indices.reshape(-1) // divisor(n_experts, world_size, ranks_per_node)
        return _plan_from(token, node, local, node != rank // ranks_per_node, ranks_per_node)
    return wrong


def _local_rank_strided(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, _ = _pairs(indices, n_experts, world_size, ranks_per_node)
    local = indices.reshape(-1) % ranks_per_node
    return _plan_from(token, node, local, node != rank // ranks_per_node, ranks_per_node)


def _forward_counts(indices, n_experts, world_size, ranks_per_node, rank):
    token, node, local = _pairs(indices, n_experts, world_size, ranks_per_node)
    return _plan_from(token, node, local, node != rank // ranks_per_node, ranks_per_node, dedup_ranks=False)


MISTAKES = [
    Mistake("you sent one row per (token, expert) PAIR: a token with two experts on one node crossed InfiniBand "
            "twice. V3 sends a token to each node ONCE, however many of its experts live there, and the node "
            "forwards it to its GPUs over NVLink ([V3] 3.2.2): keep each (token, node) pair once (e.g. a bool "
            "[tokens, n_nodes] of hits, then its nonzero entries).", _per_pair),
    Mistake("you sent one row per (token, destination RANK), as DeepEP counts a token (once per rank): a token "
            "with experts on two ranks of one node crossed InfiniBand twice. V3 sends it to that node once and "
            "forwards it to both ranks over NVLink: one row per (token, node), and the ranks go in forward.",
            _per_rank),
    Mistake("your sends include the token's OWN node (the node of `rank`, rank // ranks_per_node). A token reaches "
            "the GPUs of its own node over NVLink alone: nothing crosses InfiniBand, and the layer's traffic "
            "accounting (Traffic.dedup_cross_node_bytes_per_node) does not count it. Leave that node out.",
            _own_node_included),
    Mistake("you left out only the token's own RANK: the other ranks of its node are reached over NVLink too, "
            "without crossing InfiniBand. Leave out the whole node rank // ranks_per_node.", _own_rank_excluded),
    Mistake("you took expert // experts_per_rank as the expert's NODE: that is its RANK. Its node is "
            "rank // ranks_per_node = expert // (experts_per_rank * ranks_per_node).",
            _node_of_expert_by(lambda e, w, r: e // w)),
    Mistake("you computed the node of expert e as e // ranks_per_node: that formula turns a RANK into its node. "
            "An expert's node is (e // experts_per_rank) // ranks_per_node = e // experts_per_node, with "
            "experts_per_node = n_experts // n_nodes.", _node_of_expert_by(lambda e, w, r: r)),
    Mistake("you computed the node of expert e as e // n_nodes: divide by the number of experts per node "
            "(n_experts // n_nodes), not by the number of nodes.", _node_of_expert_by(lambda e, w, r: w // r)),
    Mistake("your forward map puts expert e on the node's rank e % ranks_per_node (a strided placement). The "
            "experts are placed contiguously: expert e lives on rank e // experts_per_rank, which is rank "
            "(e // experts_per_rank) % ranks_per_node of its node.", _local_rank_strided),
    Mistake("your forward map COUNTS the token's experts on each rank (2 for a rank holding two of them): forgot "
            "the deduplication inside the node. The node forwards a token to each rank once, however many of its "
            "experts that rank holds (the rank runs each expert on the same copy): forward is bool, True where "
            "the rank holds at least one of the token's experts.", _forward_counts),
]


# --------------------------------------------------------------------------------------------- cases
def _random_indices(tokens: int, n_experts: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(tokens)])


# 24 experts on 6 ranks (4 each), 2 ranks per node: node 0 = ranks 0, 1 (experts 0-7), node 1 = ranks 2, 3
# (experts 8-15), node 2 = ranks 4, 5 (experts 16-23); the tokens live on rank 0 (node 0). Experts per rank (4),
# ranks per node (2) and nodes (3) differ, so that each confusion of the placement gives its own wrong answer.
EXAMPLE = (torch.tensor([[8, 9, 17], [12, 5, 16], [0, 3, 2], [22, 13, 18]]), 24, 6, 2, 0)


def _cases() -> list[Case]:
    cases = [Case(EXAMPLE, label="the example above: indices [[8, 9, 17], [12, 5, 16], [0, 3, 2], [22, 13, 18]], "
                                 "n_experts=24, world_size=6, ranks_per_node=2, rank=0")]
    for tokens, n_experts, k, world_size, per_node, rank, seed in (
            (12, 16, 4, 8, 2, 5, 1), (20, 32, 8, 8, 4, 2, 2), (16, 16, 4, 4, 1, 3, 3), (24, 64, 8, 16, 4, 9, 4)):
        cases.append(Case((_random_indices(tokens, n_experts, k, seed), n_experts, world_size, per_node, rank),
                          label=f"{tokens} tokens x top_k={k} random experts (seeded), n_experts={n_experts}, "
                                f"world_size={world_size}, ranks_per_node={per_node}, rank={rank}"))
    return cases


def _cause(got: Any, case: Case) -> str | None:
    """The hint of the first mistake that explains ``got`` on ``case``: by its rows alone when the rows are wrong
    (however the learner then built the forwarding map), by the whole plan when only the forwarding map is."""
    plan, right = _as_plan(got), _as_plan(placement.dispatch_plan(*clone_args(case.args)))
    if isinstance(plan, str):
        return None
    rows_wrong = not torch.equal(plan[0], right[0])
    for mistake in MISTAKES:
        try:
            wrong = _as_plan(mistake.fn(*clone_args(case.args)))
        except Exception:  # a mistake model may not apply to every input
            continue
        if isinstance(wrong, str):
            continue
        if torch.equal(plan[0], wrong[0]) if rows_wrong else _compare_plans(got, wrong) is None:
            return mistake.hint
    return None


def _node_counts(plan: Any, n_nodes: int) -> list[int] | None:
    """Rows of sends towards each node, or None when the nodes are not all in [0, n_nodes)."""
    nodes = plan[0][:, 1]
    if len(nodes) and (int(nodes.min()) < 0 or int(nodes.max()) >= n_nodes):
        return None
    return torch.bincount(nodes, minlength=n_nodes).tolist()


def check_dispatch_plan(fn: Callable[[torch.Tensor, int, int, int, int], Any]) -> None:
    """Check ``dispatch_plan(indices, n_experts, world_size, ranks_per_node, rank) -> (sends, forward)``: the rows
    towards each node against the layer's traffic accounting (``Traffic.node_rows``, own node excluded), the rows
    and the forwarding map against ``placement.dispatch_plan`` (rows in any order)."""
    cases = _cases()

    @checker("dispatch_plan")
    def body() -> str:
        for case in cases:
            learner_args = clone_args(case.args)
            got = call_learner(fn, *learner_args, name="Your dispatch_plan", label=case.describe())
            expect_inputs_unchanged(case.args, learner_args, "dispatch_plan")
            indices, n_experts, world_size, per_node, rank = case.args
            n_nodes, own = world_size // per_node, rank // per_node
            node_rows = traffic.traffic(indices, torch.full((len(indices),), rank), n_experts, world_size,
                                                per_node).node_rows[rank]
            crossing = [0 if n == own else rows for n, rows in enumerate(node_rows)]
            plan = _as_plan(got)
            counts = None if isinstance(plan, str) else _node_counts(plan, n_nodes)
            if isinstance(plan, str):
                problem = plan
            elif counts is None:
                problem = f"sends names nodes outside [0, {n_nodes - 1}] (there are {n_nodes} nodes)"
            elif counts != crossing:
                problem = (f"your sends cross to the nodes 0..{n_nodes - 1} {counts} times, but the layer's traffic "
                           f"accounting counts {crossing} distinct (token, node) pairs (Traffic.node_rows of rank "
                           f"{rank}; its own node {own} is not crossed)")
            else:
                problem = _compare_plans(got, placement.dispatch_plan(*clone_args(case.args)))
            if problem is None:
                continue
            cause = _cause(got, case)
            raise CheckFailed(f"For the input {case.describe()}: {problem}.\n" +
                              (f"Likely cause: {cause}" if cause else
                               "Hint: for each token, mark the nodes (and the ranks) that hold its experts, keep "
                               "the remote nodes, and write one row per marked (token, node)."))
        return (f"the rows towards each node agree with the layer's traffic accounting, and the rows and the "
                f"forwarding map with the reference, on all {len(cases)} cases")

    return body()
