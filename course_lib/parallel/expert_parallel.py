"""Expert parallelism ([V3] 3.2, 3.4): the DeepSeekMoE layer spread over the ranks of a process group.

DeepSeek-V3 trains with 64-way expert parallelism over 8 nodes: each GPU holds a few routed experts, and every
MoE layer moves tokens to the GPUs of their experts and back with two all-to-all exchanges ([V3] 3.2):

    route (replicated)     every rank routes its own tokens: scores, top-k, gates (``DeepSeekMoE.route``)
    dispatch (all-to-all)  each (token, expert) pair is sent to the rank holding that expert
    experts (local)        each rank runs its n_routed / world_size experts on what it received
    combine (all-to-all)   the outputs go back to the tokens' ranks, which weight them by the gates and sum
    shared expert          replicated: every rank runs it on its own tokens, no communication

Placement: rank r holds the experts r * E_r ... (r + 1) * E_r - 1 (E_r = n_routed / world_size), and a "node" is
``ranks_per_node`` consecutive ranks. With group-limited routing the groups are the nodes (``n_groups`` = number
of nodes), so a token's experts live on at most ``topk_groups`` nodes ([V3] 2.1.2; V3: M = 4 of 8 nodes).

Design of the dispatch (stated, and checked by ``checks.expert_parallel``): one row is sent per **(token, expert)
pair**, so a token with two experts on one rank travels twice. DeepSeek-V3's kernels instead send a token once
per *node* over InfiniBand and forward it inside the node over NVLink to the GPUs of its experts ([V3] 3.2.2):
``Traffic`` counts both, the bytes this layer sends and the node-deduplicated bytes V3 would send, and
``dispatch_plan`` gives one rank's node-deduplicated plan (the (token, node) rows and the forwarding inside the node).

Balancing: each rank counts the load of its own tokens; ``update_bias`` SUM-all-reduces the counts once per
optimizer step before the sign update ([V3] 2.1.2), so every rank applies the same update to the same bias. With
per-rank counts the ranks' biases drift apart (``global_load=False`` shows it).

Launch the data-parallel + expert-parallel training of the tiny model on 4 CPU processes, or on 4 GPUs::

    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20
    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20 --backend nccl
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from course_lib.moe import balance
from course_lib.parallel import distributed
from course_lib.core.layers import swiglu
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE, RoutingStateModule
from course_lib.training.step import StepRollback, TrainingDiverged, loss_positions
from course_lib.core.validation import check_int


# --------------------------------------------------------------------------------------------- placement
def check_placement(n_experts: int, world_size: int, ranks_per_node: int = 1) -> None:
    """Raise TypeError for a size that is not an int, ValueError unless ``n_experts`` split evenly over
    ``world_size`` ranks in nodes of ``ranks_per_node``."""
    for name, value in (("n_experts", n_experts), ("world_size", world_size), ("ranks_per_node", ranks_per_node)):
        check_int(name, value, 1)
    if n_experts % world_size:
        raise ValueError(f"n_experts={n_experts} must be divisible by world_size={world_size}: every rank holds "
                         f"the same number of experts")
    if world_size % ranks_per_node:
        raise ValueError(f"world_size={world_size} must be divisible by ranks_per_node={ranks_per_node}")


def _check_indices(indices: torch.Tensor, n_experts: int) -> None:
    """Raise TypeError / ValueError unless indices is an integer tensor [tokens, top_k] of experts in [0, n_experts)."""
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor [tokens, top_k] of expert ids (e.g. int64 from topk), "
                        f"got {indices!r:.80}")
    if indices.dim() != 2:
        raise ValueError(f"indices must be [tokens, top_k], got shape {list(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts - 1}], got values from {int(indices.min())} to "
                         f"{int(indices.max())}")


def send_splits(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    """Rows this rank sends to each rank in the dispatch all-to-all: one row per (token, expert) pair.

    indices: int64 [tokens, top_k], the chosen experts of this rank's tokens -> a list of ``world_size`` ints,
    in rank order; entry r counts the pairs whose expert lives on rank r (experts r * E_r ... (r+1) * E_r - 1,
    E_r = n_experts / world_size). The entries sum to tokens * top_k. A token with two experts on one rank counts
    twice: this course's layer sends one row per pair (V3 deduplicates per node; see the module docstring).
    Raises TypeError for non-integer indices, ValueError for indices not 2-D or out of range, or a bad placement.
    """
    check_placement(n_experts, world_size)
    _check_indices(indices, n_experts)
    load = balance.expert_load(indices, n_experts)  # [n_experts] pairs per expert, in expert order
    return load.view(world_size, n_experts // world_size).sum(dim=1).long().tolist()


def expert_ranks(indices: torch.Tensor, n_experts: int, world_size: int) -> torch.Tensor:
    """The rank holding each chosen expert. indices: int64 [tokens, top_k] -> int64 [tokens, top_k].
    Raises TypeError / ValueError as ``send_splits``."""
    check_placement(n_experts, world_size)
    _check_indices(indices, n_experts)
    return indices // (n_experts // world_size)


def _rank_hits(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """bool [tokens, n_nodes, ranks_per_node]: whether each token has at least one expert on each rank (ranks
    numbered node by node)."""
    ranks = expert_ranks(indices, n_experts, world_size)  # [tokens, top_k]
    hits = torch.zeros(indices.shape[0], world_size, dtype=torch.bool, device=indices.device)
    return hits.scatter_(1, ranks, True).view(-1, world_size // ranks_per_node, ranks_per_node)


def _node_hits(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """bool [tokens, n_nodes]: whether each token has at least one expert on each node."""
    return _rank_hits(indices, n_experts, world_size, ranks_per_node).any(dim=2)


def destination_nodes(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> torch.Tensor:
    """How many distinct nodes each token's experts live on. indices: int64 [tokens, top_k] -> int64 [tokens],
    each in [1, min(top_k, n_nodes)]; with group-limited routing (groups = nodes) at most ``topk_groups``."""
    check_placement(n_experts, world_size, ranks_per_node)
    return _node_hits(indices, n_experts, world_size, ranks_per_node).sum(dim=1)


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


def dispatch_plan(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int,
                  rank: int) -> DispatchPlan:
    """The node-deduplicated dispatch of the tokens of ``rank``: what DeepSeek-V3 sends once per node over
    InfiniBand, and where each arriving token is forwarded inside the node over NVLink ([V3] 3.2.2).

    indices: int64 [tokens, top_k], the experts chosen for this rank's tokens; placement as in ``check_placement``
    (rank r holds experts r * E_r ... (r + 1) * E_r - 1, a node is ``ranks_per_node`` consecutive ranks).
    Returns a ``DispatchPlan`` (sends int64 [S, 2], forward bool [S, ranks_per_node]); the number of rows of
    sends towards node n is ``traffic(...).node_rows[rank][n]`` for every node but the rank's own.
    Raises TypeError for non-integer indices or sizes, ValueError for indices not 2-D or out of range, a bad
    placement, or a rank outside [0, world_size).
    """
    check_placement(n_experts, world_size, ranks_per_node)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    hits = _rank_hits(indices, n_experts, world_size, ranks_per_node)  # [tokens, n_nodes, ranks_per_node]
    crosses = hits.any(dim=2)  # [tokens, n_nodes]: each (token, node) once, however many experts live there
    crosses[:, rank // ranks_per_node] = False  # the own node: no InfiniBand crossing
    node, token = crosses.T.nonzero().unbind(dim=1)  # sorted by node, then token
    return DispatchPlan(sends=torch.stack([token, node], dim=1), forward=hits[token, node])


# --------------------------------------------------------------------------------------------- accounting
@dataclass(frozen=True)
class Traffic:
    """The bytes moved by one MoE layer's dispatch and combine, counted from the split sizes.

    ``splits[i][j]``: rows rank i sends rank j in the dispatch (rank i's ``send_splits``); the combine sends the
    same rows back (rank j -> rank i). ``row_bytes``: bytes of one row (dim x bytes per value). ``node_rows[i][n]``:
    distinct (token, node) pairs of rank i's tokens towards node n, what a sender that deduplicates per node
    (V3's dispatch over InfiniBand, [V3] 3.2.2) sends. Rows a rank sends itself, and rows that stay in their
    node, are counted apart: only the rest crosses the network between nodes.
    """

    splits: tuple[tuple[int, ...], ...]
    node_rows: tuple[tuple[int, ...], ...]
    ranks_per_node: int
    row_bytes: int

    @property
    def world_size(self) -> int:
        return len(self.splits)

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def dispatch_bytes_per_rank(self) -> list[int]:
        """Bytes each rank sends to other ranks in the dispatch (its own rows are a local copy)."""
        return [sum(row[j] for j in range(self.world_size) if j != i) * self.row_bytes
                for i, row in enumerate(self.splits)]

    def combine_bytes_per_rank(self) -> list[int]:
        """Bytes each rank sends back to other ranks in the combine: what it received in the dispatch."""
        return [sum(self.splits[i][j] for i in range(self.world_size) if i != j) * self.row_bytes
                for j in range(self.world_size)]

    def cross_node_bytes_per_node(self) -> list[int]:
        """Bytes leaving each node, dispatch plus combine, one row per (token, expert) pair (this layer)."""
        out = [0] * (self.world_size // self.ranks_per_node)
        for i, row in enumerate(self.splits):
            for j, rows in enumerate(row):
                if self.node_of(i) != self.node_of(j):
                    out[self.node_of(i)] += rows * self.row_bytes  # dispatch i -> j
                    out[self.node_of(j)] += rows * self.row_bytes  # combine j -> i
        return out

    def dedup_cross_node_bytes_per_node(self) -> list[int]:
        """Bytes leaving each node, dispatch plus combine, when a token crosses to each remote node once (V3)."""
        out = [0] * (self.world_size // self.ranks_per_node)
        for i, row in enumerate(self.node_rows):
            for n, rows in enumerate(row):
                if n != self.node_of(i):
                    out[self.node_of(i)] += rows * self.row_bytes
                    out[n] += rows * self.row_bytes
        return out

    def total_bytes(self) -> int:
        """Bytes sent between ranks, dispatch plus combine."""
        return sum(self.dispatch_bytes_per_rank()) + sum(self.combine_bytes_per_rank())


def traffic(indices: torch.Tensor, source_rank: torch.Tensor, n_experts: int, world_size: int,
            ranks_per_node: int = 1, row_bytes: int = 4) -> Traffic:
    """The ``Traffic`` of one layer for tokens from all ranks.

    indices: int64 [tokens, top_k] chosen experts; source_rank: int64 [tokens], the rank each token lives on;
    row_bytes: bytes of one row (e.g. dim * 4 for float32, dim * 1 for V3's FP8 dispatch).
    Raises TypeError for non-integer indices, source ranks or row_bytes, ValueError for wrong shapes, values out
    of range or row_bytes < 1.
    """
    check_placement(n_experts, world_size, ranks_per_node)
    _check_indices(indices, n_experts)
    check_int("row_bytes", row_bytes, 1)
    if not isinstance(source_rank, torch.Tensor) or source_rank.is_floating_point() or source_rank.dtype == torch.bool:
        raise TypeError(f"source_rank must be an integer tensor [tokens] of ranks, got {source_rank!r:.80}")
    if indices.dim() != 2 or source_rank.shape != indices.shape[:1]:
        raise ValueError(f"indices must be [tokens, top_k] and source_rank [tokens], got {list(indices.shape)} and "
                         f"{list(source_rank.shape)}")
    if source_rank.numel() and not (0 <= int(source_rank.min()) and int(source_rank.max()) < world_size):
        raise ValueError(f"source_rank must lie in [0, {world_size}), got {source_rank.min()}..{source_rank.max()}")
    splits, node_rows = [], []
    for rank in range(world_size):
        mine = indices[source_rank == rank]  # [this rank's tokens, top_k]
        splits.append(tuple(send_splits(mine, n_experts, world_size)))
        node_rows.append(tuple(_node_hits(mine, n_experts, world_size, ranks_per_node).sum(dim=0).tolist()))
    return Traffic(tuple(splits), tuple(node_rows), ranks_per_node, row_bytes)


# --------------------------------------------------------------------------------------------- all-to-all
class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits, differentiable: the backward of a send is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, recv_splits: list[int], send_splits: list[int]) -> torch.Tensor:
        ctx.recv_splits, ctx.send_splits = recv_splits, send_splits
        out = x.new_empty(sum(recv_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _AllToAll.apply(grad.contiguous(), ctx.send_splits, ctx.recv_splits), None, None


def all_to_all(x: torch.Tensor, recv_splits: list[int], send_splits: list[int]) -> torch.Tensor:
    """Exchange rows between all ranks of the default group, with gradients.

    x: [sum(send_splits), ...], rows for rank 0 first, then rank 1, ... -> [sum(recv_splits), ...], rows from
    rank 0 first. send_splits[r]: rows this rank sends rank r; recv_splits[r]: rows it receives from rank r (which
    must equal rank r's send_splits[this rank]: exchange the sizes first). The gradient of the output goes back
    by the reverse exchange. Every rank must call it.
    """
    if x.shape[0] != sum(send_splits):
        raise ValueError(f"x has {x.shape[0]} rows but send_splits {send_splits} sum to {sum(send_splits)}")
    return _AllToAll.apply(x, list(recv_splits), list(send_splits))


# --------------------------------------------------------------------------------------------- the layer
class ExpertParallelMoE(RoutingStateModule):
    """One rank's part of a DeepSeekMoE layer: replicated router and shared expert, n_routed / world_size experts.

    Built from a single-process ``DeepSeekMoE`` (same weights, copied): ``ExpertParallelMoE(moe, rank,
    world_size, ranks_per_node)``. forward(x [..., dim]) -> [..., dim] on this rank's tokens; every rank of the
    default process group must call it (each with its own number of tokens, at least one), in the same order.
    Parameters: ``centroids`` [n_routed, dim] and ``shared`` (replicated: their gradients must be summed over
    ranks, ``replicated_parameters``), and this rank's experts ``w_gate``, ``w_up`` [E_r, expert_dim,
    dim], ``w_down`` [E_r, dim, expert_dim] (``expert_parameters``: their gradients are complete after backward,
    the combine's backward brings them from every rank). Buffers: ``bias`` [n_routed] (the same on every rank)
    and ``load`` [n_routed], this rank's assignments since the last ``update_bias``: float32 under every cast and
    state_dict load, as in DeepSeekMoE (``moe.RoutingStateModule``).

    With group-limited routing (``moe.n_groups > 1``) the groups must be the nodes: n_groups = world_size /
    ranks_per_node. Raises ValueError otherwise, or when the experts do not split evenly.
    """

    route = DeepSeekMoE.route  # the single-process router, unchanged: scores, weights, indices of flat tokens

    def __init__(self, moe: DeepSeekMoE, rank: int, world_size: int, ranks_per_node: int = 1) -> None:
        super().__init__()
        if not isinstance(moe, DeepSeekMoE):
            raise TypeError(f"ExpertParallelMoE is built from a course_lib.moe.layer.DeepSeekMoE, got {type(moe).__name__}")
        check_placement(moe.n_routed_experts, world_size, ranks_per_node)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        n_nodes = world_size // ranks_per_node
        if moe.n_groups > 1 and moe.n_groups != n_nodes:
            raise ValueError(f"group-limited routing needs groups = nodes: n_groups={moe.n_groups}, but "
                             f"{world_size} ranks / {ranks_per_node} per node = {n_nodes} nodes")
        self.rank, self.world_size, self.ranks_per_node = rank, world_size, ranks_per_node
        for name in ("dim", "expert_dim", "n_routed_experts", "n_shared_experts", "top_k", "n_groups",
                     "topk_groups", "route_scale"):
            setattr(self, name, getattr(moe, name))
        self.experts_per_rank = e_r = moe.n_routed_experts // world_size
        mine = slice(rank * e_r, (rank + 1) * e_r)
        self.centroids = nn.Parameter(moe.centroids.detach().clone())
        self.w_gate = nn.Parameter(moe.w_gate.detach()[mine].clone())
        self.w_up = nn.Parameter(moe.w_up.detach()[mine].clone())
        self.w_down = nn.Parameter(moe.w_down.detach()[mine].clone())
        self.shared = copy.deepcopy(moe.shared)
        self.register_buffer("bias", moe.bias.detach().clone())
        self.register_buffer("load", torch.zeros(moe.n_routed_experts, dtype=torch.float32), persistent=False)
        self.last_indices: torch.Tensor | None = None  # [..., top_k] this rank's tokens' experts
        self.last_send_splits: list[int] = []  # rows sent to each rank in the last dispatch
        self.last_recv_splits: list[int] = []  # rows received from each rank

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, world_size={self.world_size}, ranks_per_node={self.ranks_per_node}, "
                f"experts {self.rank * self.experts_per_rank}..{(self.rank + 1) * self.experts_per_rank - 1} "
                f"of {self.n_routed_experts}, top_k={self.top_k}, n_groups={self.n_groups}, "
                f"topk_groups={self.topk_groups}")

    def expert_parameters(self) -> list[nn.Parameter]:
        """This rank's own experts' weights (not replicated)."""
        return [self.w_gate, self.w_up, self.w_down]

    def replicated_parameters(self) -> list[nn.Parameter]:
        """The parameters every rank holds a copy of: the router's centroids and the shared expert."""
        return [self.centroids] + (list(self.shared.parameters()) if self.shared is not None else [])

    def _check_group(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoE needs a process group: call distributed.init_process_group (or "
                               "init_from_env under torchrun) on every rank first")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise RuntimeError(f"this layer was built for rank {self.rank} of {self.world_size}, but the process "
                               f"group says rank {dist.get_rank()} of {dist.get_world_size()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"ExpertParallelMoE expects a floating-point tensor [..., {self.dim}], got {x!r:.80}")
        if x.dim() < 1 or x.shape[-1] != self.dim or x.numel() == 0:
            raise ValueError(f"ExpertParallelMoE expects a non-empty tensor [..., {self.dim}], got {list(x.shape)}")
        self._check_group()
        flat = x.reshape(-1, self.dim)  # [tokens, dim]
        scores, weights, indices = self.route(flat)
        load = balance._expert_load_unchecked(indices, self.n_routed_experts)  # topk_route's own choices
        if self.training and torch.is_grad_enabled():
            self.load += load.to(self.load.device)
        self.last_indices = indices.view(*x.shape[:-1], -1)
        out = self._routed_experts(flat, weights.to(x.dtype), indices, load)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(x.shape)

    def _routed_experts(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                        load: torch.Tensor) -> torch.Tensor:
        """Dispatch, local experts, combine. x: [tokens, dim]; weights, indices: [tokens, top_k] -> [tokens, dim]."""
        w, e_r = self.world_size, self.experts_per_rank
        order = indices.reshape(-1).argsort(stable=True)  # pairs by expert = by destination rank (contiguous)
        send_counts = load.to(device=x.device, dtype=torch.long).view(w, e_r)  # [dest rank, its local expert]
        recv_counts = torch.empty_like(send_counts)  # [source rank, my local expert]
        dist.all_to_all_single(recv_counts, send_counts)  # sizes first: every rank learns what it will receive
        self.last_send_splits = send_counts.sum(dim=1).tolist()
        self.last_recv_splits = recv_counts.sum(dim=1).tolist()
        send = x.index_select(0, order // self.top_k)  # [pairs, dim], one row per (token, expert) pair
        received = all_to_all(send, self.last_recv_splits, self.last_send_splits)  # dispatch
        # received: by source rank, then by my local expert; regroup by local expert to run each expert once
        local_expert = torch.arange(e_r, device=x.device).repeat(w).repeat_interleave(recv_counts.reshape(-1))
        by_expert = local_expert.argsort(stable=True)
        rows = received.index_select(0, by_expert).split(recv_counts.sum(dim=0).tolist())
        outputs = torch.cat([swiglu(r, g, u, d) for r, g, u, d in
                             zip(rows, self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0))])
        outputs = outputs.index_select(0, by_expert.argsort())  # back to the received order
        returned = all_to_all(outputs, self.last_send_splits, self.last_recv_splits)  # combine: [pairs, dim]
        gates = weights.reshape(-1).index_select(0, order)[:, None]
        return torch.zeros_like(x).index_add(0, order // self.top_k, returned * gates)

    @torch.no_grad()
    def update_bias(self, gamma: float = 0.001, global_load: bool = True) -> torch.Tensor:
        """b <- b + gamma * sign(mean(c) - c), then reset the count. Call once per optimizer step on every rank.

        global_load=True (right): c is the load of the whole step over all ranks, this rank's counts
        SUM-all-reduced, so every rank applies the same update. global_load=False (the bug, for teaching): c is
        this rank's counts alone and the ranks' biases drift apart. Returns the c used ([n_routed] float32).
        """
        used = self.load.clone()
        if global_load:
            self._check_group()
            dist.all_reduce(used, op=dist.ReduceOp.SUM)
        self.bias.copy_(balance.update_bias(self.bias, used, gamma))
        self.load.zero_()
        return used


# --------------------------------------------------------------------------------------------- the model
def expert_parallel_model(model: TinyDeepSeek, rank: int, world_size: int, ranks_per_node: int = 1) -> TinyDeepSeek:
    """A copy of ``model`` whose DeepSeekMoE layers are replaced by this rank's ExpertParallelMoE (same weights).
    The other modules (embedding, attention, dense FFNs, head, MTP) are replicated (data parallelism)."""
    model = copy.deepcopy(model)
    for block in model.blocks:
        if isinstance(block.ffn, DeepSeekMoE):
            block.ffn = ExpertParallelMoE(block.ffn, rank, world_size, ranks_per_node)
    return model


def expert_parallel_layers(model: nn.Module) -> list[ExpertParallelMoE]:
    return [m for m in model.modules() if isinstance(m, ExpertParallelMoE)]


def gather_traffic(model: nn.Module, row_bytes: int) -> list[Traffic]:
    """The ``Traffic`` of the last forward of each ExpertParallelMoE layer of ``model``, gathered from every rank
    (a collective: every rank calls it). row_bytes: bytes of one row (dim x bytes per value)."""
    layers = expert_parallel_layers(model)
    if not layers or any(layer.last_indices is None for layer in layers):
        raise ValueError("gather_traffic needs a model with ExpertParallelMoE layers that have run a forward")
    w, per_node = layers[0].world_size, layers[0].ranks_per_node
    rows = []
    for layer in layers:
        hits = _node_hits(layer.last_indices.reshape(-1, layer.top_k), layer.n_routed_experts, w, per_node)
        rows.append(torch.cat([torch.tensor(layer.last_send_splits, device=hits.device), hits.sum(dim=0)]))
    mine = torch.stack(rows)  # [layers, world_size + n_nodes]: send splits, then (token, node) pairs
    everyone = [torch.zeros_like(mine) for _ in range(w)]
    dist.all_gather(everyone, mine)
    return [Traffic(splits=tuple(tuple(e[i, :w].tolist()) for e in everyone),
                    node_rows=tuple(tuple(e[i, w:].tolist()) for e in everyone), ranks_per_node=per_node,
                    row_bytes=row_bytes) for i in range(len(layers))]


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` except the experts' own weights of its ExpertParallelMoE layers."""
    own = {id(p) for layer in expert_parallel_layers(model) for p in layer.expert_parameters()}
    return [p for p in model.parameters() if id(p) not in own]


def all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """SUM-all-reduce the gradients of ``params`` (one flat buffer, one collective). A missing gradient counts as 0."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p).clone()


def _squared_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """Sum of the squared gradients of ``params`` (float64 scalar on ``device``); missing gradients count as 0."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is not None:
            total += (p.grad.double() ** 2).sum()
    return total


class StepResult(NamedTuple):
    """One data- and expert-parallel optimizer step: ``loss`` (main + MTP) and ``main_loss`` are means over the
    global batch, the same on every rank; ``grad_norm`` is the global norm before clipping; ``loads``: float32
    [n_moe_layers, n_routed], the load used by the bias update (global, or this rank's with global_load=False)."""

    loss: float
    main_loss: float
    grad_norm: float
    loads: torch.Tensor


def train_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, *, gamma: float = 0.01,
               mtp_lambda: float = 0.3, grad_clip: float = 0.0, global_load: bool = True) -> StepResult:
    """One optimizer step of data + expert parallelism on this rank's share of the batch (every rank calls it).

    tokens: int64 [B_r, T_r + 1], this rank's windows; the ranks' shares may differ in windows and in length.
    Each rank backpropagates its loss weighted by its share of the global input positions,
    B_r T_r / sum_s B_s T_s (``step.loss_positions``, SUM-all-reduced with the losses): the main loss and every
    MTP depth's loss divide their sums by B T ([V3] eq. 24), so the weighted sum over ranks is the loss of the
    whole batch. The replicated parameters' gradients are SUM-all-reduced, the experts' gradients are already
    complete (the combine's backward brings each rank's weighted share), so the step equals ``step.train_step``
    on the whole batch with ``balance_mode="loss_free"`` (or on the ranks' shares as micro-batches, when their
    lengths differ; tested). The gradient norm for clipping is global. Then each MoE layer's bias is updated from
    the global load (``ExpertParallelMoE.update_bias``).

    Raises step.TrainingDiverged (on every rank) when the loss or the gradient norm is not finite. Any exception
    (that, an error in a hook or in the optimizer, KeyboardInterrupt, ...) leaves this rank's weights, optimizer
    state and every layer's bias and load as they were (``step.StepRollback``), and so on every rank: a rank
    that fails leaves the others waiting in a collective, which raises (the peer is gone, or the process group's
    timeout passes) and rolls them back too. The step ends with a barrier, so no rank keeps a step that another
    rank failed after the last exchange of data.
    """
    with StepRollback(model, optimizer) as rollback:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        main, mtp = model.losses(tokens, mtp_lambda)
        count = loss_positions(tokens)
        sums = torch.stack([main + mtp, main]).detach().double() * count
        sums = torch.cat([sums, sums.new_tensor([count])])  # [loss x count, main x count, count]
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        losses = sums[:2] / sums[2]  # the global batch's (loss, main loss)
        if not torch.isfinite(losses).all():
            raise TrainingDiverged(f"the loss ({float(losses[0]):.4g}, main {float(losses[1]):.4g}) is not finite")
        ((main + mtp) * (count / float(sums[2]))).backward()  # this rank's share of the global positions
        shared = replicated_parameters(model)
        all_reduce_gradients(shared)
        own = [p for layer in expert_parallel_layers(model) for p in layer.expert_parameters()]
        own_squares = _squared_norm(own, tokens.device).reshape(1)
        dist.all_reduce(own_squares, op=dist.ReduceOp.SUM)  # every rank's experts
        grad_norm = float((own_squares[0] + _squared_norm(shared, tokens.device)).sqrt())
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm is {grad_norm} although the loss {float(losses[0]):.4g} is "
                                   f"finite")
        if grad_clip > 0:
            scale = min(1.0, grad_clip / (grad_norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        rollback.optimizer_step()
        loads = [layer.update_bias(gamma, global_load) for layer in expert_parallel_layers(model)]
        result = StepResult(float(losses[0]), float(losses[1]), grad_norm,
                            torch.stack(loads).cpu() if loads else torch.zeros(0, 0))
        dist.barrier()  # commit: every rank got here; a rank that failed makes the others raise and roll back
    return result


# --------------------------------------------------------------------------------------------- workers
def layer_worker(rank: int, world_size: int, moe: DeepSeekMoE, x: torch.Tensor, grad_out: torch.Tensor,
                 ranks_per_node: int = 1, bias_steps: int = 0, gamma: float = 0.01,
                 fail_rank: int | None = None) -> dict:
    """Run by every rank (``distributed.run_ranks``): the expert-parallel copy of ``moe`` on this rank's share of
    the tokens (x: [world_size * n, dim] split in equal chunks; grad_out: the same shape, the loss is
    sum(out * grad_out)); then, from the initial bias, ``bias_steps`` training forwards each followed by
    ``update_bias``, once with the global load and once with this rank's counts only.

    Returns {"out": this rank's output rows, "grads": name -> gradient (replicated ones summed over ranks),
    "send_splits", "indices", "biases" and "biases_per_rank": [bias_steps + 1, n_routed] float32}. ``fail_rank``:
    that rank raises before the dispatch (to test that the others stop with an error instead of hanging).
    """
    layer = ExpertParallelMoE(moe, rank, world_size, ranks_per_node).train()
    mine_x, mine_g = x.chunk(world_size)[rank], grad_out.chunk(world_size)[rank]
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} fails on purpose before the dispatch")
    out = layer(mine_x)
    (out * mine_g).sum().backward()
    all_reduce_gradients(layer.replicated_parameters())
    result = {"out": out.detach(), "send_splits": layer.last_send_splits, "indices": layer.last_indices.clone(),
              "grads": {name: p.grad.clone() for name, p in layer.named_parameters()}}
    start = layer.bias.clone()
    for key, global_load in (("biases", True), ("biases_per_rank", False)):
        layer.bias.copy_(start)
        layer.load.zero_()
        biases = [start]
        for _ in range(bias_steps):
            layer(mine_x)
            layer.update_bias(gamma, global_load)
            biases.append(layer.bias.clone())
        result[key] = torch.stack(biases)
    return result


def train_worker(rank: int, world_size: int, model: TinyDeepSeek, batches: list[torch.Tensor | list[torch.Tensor]],
                 ranks_per_node: int = 1, lr: float = 0.05, gamma: float = 0.01, grad_clip: float = 0.0,
                 shares: list[int] | None = None) -> dict:
    """Run by every rank: ``train_step`` with SGD on this rank's share of each global batch in ``batches``: equal
    chunks, or ``shares[r]`` windows for rank r; a batch given as a list of ``world_size`` tensors gives rank r
    its r-th (shares of different lengths). Returns {"losses": [...], "state": the model's state_dict after
    training (this rank's experts)}."""
    local = expert_parallel_model(model, rank, world_size, ranks_per_node)
    optimizer = torch.optim.SGD(local.parameters(), lr=lr)
    mine = [b[rank] if isinstance(b, list) else (b.split(shares) if shares else b.chunk(world_size))[rank]
            for b in batches]
    losses = [train_step(local, optimizer, tokens, gamma=gamma, grad_clip=grad_clip).loss for tokens in mine]
    return {"losses": losses, "state": {k: v.clone() for k, v in local.state_dict().items()}}


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m course_lib.parallel.expert_parallel",
                                description="Data + expert parallel training of the tiny DeepSeek model (one "
                                            "process per rank; gloo on CPUs, nccl on GPUs).")
    p.add_argument("--backend", default="gloo", choices=distributed.BACKENDS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (windows), split evenly over the ranks")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--n-routed-experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--topk-groups", type=int, default=0,
                   help="group-limited routing over the nodes: keep this many nodes per token (0 = off)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gamma", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout in seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    from course_lib.training.data import synthetic_task
    from course_lib.core.runtime import seed_everything

    args = build_parser().parse_args(argv)
    device = distributed.init_from_env(args.backend, args.timeout)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        if args.batch_size % world_size:
            raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world_size} ranks")
        n_nodes = world_size // args.ranks_per_node
        groups = (n_nodes, args.topk_groups) if args.topk_groups else (1, 1)
        corpus = synthetic_task(n_lines=4000, seed=args.seed)
        seed_everything(args.seed)  # the same initial weights on every rank
        config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, expert_dim=32,
                             n_routed_experts=args.n_routed_experts, top_k=args.top_k, n_groups=groups[0],
                             topk_groups=groups[1])
        model = expert_parallel_model(TinyDeepSeek(config), rank, world_size, args.ranks_per_node).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        data_rng = torch.Generator().manual_seed(args.seed)  # the same global batches on every rank
        row_bytes = config.dim * 4  # float32 rows
        # bytes of each step's forward, all layers: between ranks, across nodes per pair, across nodes once per node
        totals = torch.zeros(3, dtype=torch.float64)
        for step in range(1, args.steps + 1):
            batch = corpus.get_batch("train", args.batch_size, args.seq_len, data_rng)
            start = time.perf_counter()
            result = train_step(model, optimizer, batch.chunk(world_size)[rank].to(device), gamma=args.gamma)
            seconds = time.perf_counter() - start
            flows = gather_traffic(model, row_bytes)
            sent = torch.tensor([[f.total_bytes(), sum(f.cross_node_bytes_per_node()),
                                  sum(f.dedup_cross_node_bytes_per_node())] for f in flows], dtype=torch.float64)
            totals += sent.sum(dim=0)
            if rank == 0:
                ranks_bytes, node_bytes, once_bytes = (int(b) for b in sent.sum(dim=0))
                print(f"step {step:4d}  loss {result.loss:.4f}  grad norm {result.grad_norm:.3f}  "
                      f"{seconds * 1000:.0f} ms  all-to-all bytes (forward, all layers): between ranks "
                      f"{ranks_bytes:,d}, across nodes {node_bytes:,d} (once per node: {once_bytes:,d})", flush=True)
        if rank == 0:
            mean = (totals / args.steps).tolist()
            print(f"{world_size} ranks ({args.backend}), {n_nodes} node(s), {config.n_routed_experts // world_size} "
                  f"experts per rank, topk_groups {args.topk_groups or 'off'}; mean bytes per step: between ranks "
                  f"{mean[0]:,.0f}, across nodes {mean[1]:,.0f}, once per node {mean[2]:,.0f}")
        distributed.leave_process_group(completed=True)
    finally:
        distributed.leave_process_group(completed=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
