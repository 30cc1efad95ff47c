"""Where the experts live and where each token's rows go ([V3] 3.2): rank r holds the experts r * E_r ...
(r + 1) * E_r - 1 (E_r = n_experts / world_size), and a node is ``ranks_per_node`` consecutive ranks.

``send_splits`` counts the rows of this course's dispatch (one per (token, expert) pair); ``dispatch_plan`` is
DeepSeek-V3's node-deduplicated dispatch (one row per (token, remote node) over InfiniBand, then forwarded inside
the node over NVLink, [V3] 3.2.2). Shapes: indices int64 [tokens, top_k], the experts chosen for the tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from course_lib.core.validation import boundary
from course_lib.moe import balance
from course_lib.parallel import arguments


@boundary(arguments.send_splits)
def send_splits(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    """Rows this rank sends to each rank in the dispatch all-to-all: one row per (token, expert) pair.

    indices: int64 [tokens, top_k], the chosen experts of this rank's tokens -> a list of ``world_size`` ints,
    in rank order; entry r counts the pairs whose expert lives on rank r. The entries sum to tokens * top_k. A
    token with two experts on one rank counts twice: this course's layer sends one row per pair (V3 deduplicates
    per node, ``dispatch_plan``). Raises TypeError for non-integer indices, ValueError for indices not 2-D or out
    of range, or a bad placement (``arguments.check_placement``).
    """
    load = balance.expert_load(indices, n_experts)  # [n_experts] pairs per expert, in expert order
    return load.view(world_size, n_experts // world_size).sum(dim=1).long().tolist()


@boundary(arguments.expert_ranks)
def expert_ranks(indices: torch.Tensor, n_experts: int, world_size: int) -> torch.Tensor:
    """The rank holding each chosen expert. indices: int64 [tokens, top_k] -> int64 [tokens, top_k].
    Raises TypeError / ValueError as ``send_splits``."""
    return indices // (n_experts // world_size)


def rank_hits(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """bool [tokens, n_nodes, ranks_per_node]: whether each token has at least one expert on each rank (ranks
    numbered node by node). Arguments as ``destination_nodes``, unchecked (its callers check them)."""
    ranks = expert_ranks(indices, n_experts, world_size)  # [tokens, top_k]
    hits = torch.zeros(indices.shape[0], world_size, dtype=torch.bool, device=indices.device)
    return hits.scatter_(1, ranks, True).view(-1, world_size // ranks_per_node, ranks_per_node)


def node_hits(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """bool [tokens, n_nodes]: whether each token has at least one expert on each node (unchecked, as
    ``rank_hits``)."""
    return rank_hits(indices, n_experts, world_size, ranks_per_node).any(dim=2)


@boundary(arguments.destination_nodes)
def destination_nodes(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """How many distinct nodes each token's experts live on. indices: int64 [tokens, top_k] -> int64 [tokens],
    each in [1, min(top_k, n_nodes)]; with group-limited routing (groups = nodes) at most ``topk_groups``.
    Raises TypeError / ValueError as ``send_splits``."""
    return node_hits(indices, n_experts, world_size, ranks_per_node).sum(dim=1)


class DispatchPlan(NamedTuple):
    """What one rank's tokens send across nodes when each token crosses to each node once ([V3] 3.2.2).

    sends: int64 [S, 2], one row (token, node) per token and REMOTE node holding at least one of its experts
    (the token's own node excluded: it reaches its own node's GPUs over NVLink alone), sorted by node, then by
    token: the rows that cross InfiniBand. forward: bool [S, ranks_per_node]; forward[s, j] says whether the j-th
    rank of node sends[s, 1] (global rank node * ranks_per_node + j) holds at least one of the token's experts:
    where the node forwards the arriving token over NVLink, once per rank.
    """

    sends: torch.Tensor
    forward: torch.Tensor


@boundary(arguments.dispatch_plan)
def dispatch_plan(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int,
                  rank: int) -> DispatchPlan:
    """The node-deduplicated dispatch of the tokens of ``rank``: what DeepSeek-V3 sends once per node over
    InfiniBand, and where each arriving token is forwarded inside the node over NVLink ([V3] 3.2.2).

    indices: int64 [tokens, top_k], the experts chosen for this rank's tokens; placement as in the module
    docstring. Returns a ``DispatchPlan`` (sends int64 [S, 2], forward bool [S, ranks_per_node]); the number of
    rows of sends towards node n is ``traffic.traffic(...).node_rows[rank][n]`` for every node but the rank's own.
    Raises TypeError for non-integer indices or sizes, ValueError for indices not 2-D or out of range, a bad
    placement, or a rank outside [0, world_size).
    """
    hits = rank_hits(indices, n_experts, world_size, ranks_per_node)  # [tokens, n_nodes, ranks_per_node]
    crosses = hits.any(dim=2)  # [tokens, n_nodes]: each (token, node) once, however many experts live there
    crosses[:, rank // ranks_per_node] = False  # the own node: no InfiniBand crossing
    node, token = crosses.T.nonzero().unbind(dim=1)  # sorted by node, then token
    return DispatchPlan(sends=torch.stack([token, node], dim=1), forward=hits[token, node])
