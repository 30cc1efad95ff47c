"""One MoE layer spread over the ranks of a process group ([V3] 3.2): ``ExpertParallelMoE`` is the DeepSeekMoE
layer itself, with only its routed experts run another way.

    route (replicated)     every rank routes its own tokens: scores, top-k, gates (``DeepSeekMoE.route``)
    dispatch (all-to-all)  each (token, expert) pair is sent to the rank holding that expert
    experts (local)        each rank runs its n_routed / world_size experts on what it received
    combine (all-to-all)   the outputs go back to the tokens' ranks, which weight them by the gates and sum
    shared expert          replicated: every rank runs it on its own tokens, no communication

Balancing: each rank counts the load of its own tokens; ``update_bias`` SUM-all-reduces the counts once per
optimizer step before the sign update ([V3] 2.1.2), so every rank applies the same update to the same bias. With
per-rank counts the ranks' biases drift apart (``global_load=False`` shows it).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe import dispatch
from course_lib.moe.layer import DeepSeekMoE
from course_lib.parallel import arguments


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


@boundary(arguments.all_to_all)
def all_to_all(x: torch.Tensor, recv_splits: list[int], send_splits: list[int]) -> torch.Tensor:
    """Exchange rows between all ranks of the default group, with gradients.

    x: [sum(send_splits), ...], rows for rank 0 first, then rank 1, ... -> [sum(recv_splits), ...], rows from
    rank 0 first. send_splits[r]: rows this rank sends rank r; recv_splits[r]: rows it receives from rank r (which
    must equal rank r's send_splits[this rank]: exchange the sizes first). The gradient of the output goes back
    by the reverse exchange. Every rank must call it. Raises ValueError (``arguments.all_to_all``) when x does not
    hold sum(send_splits) rows.
    """
    return _AllToAll.apply(x, list(recv_splits), list(send_splits))


class ExpertParallelMoE(DeepSeekMoE):
    """One rank's part of a DeepSeekMoE layer: replicated router and shared expert, n_routed / world_size experts.

    Built from a single-process ``DeepSeekMoE`` (same weights, copied): ``ExpertParallelMoE(moe, rank,
    world_size, ranks_per_node)``. It is that layer (same ``route``, ``forward``, routing state and bias update),
    except for ``routed_experts`` (dispatch -> local experts -> combine) and ``update_bias``, whose load is summed
    over the ranks. forward(x [..., dim]) -> [..., dim] on this rank's tokens; every rank of the default process
    group must call it (each with its own number of tokens, at least one), in the same order. Parameters:
    ``centroids`` [n_routed, dim] and ``shared`` (replicated: their gradients must be summed over ranks,
    ``replicated_parameters``), and this rank's experts ``w_gate``, ``w_up`` [E_r, expert_dim, dim], ``w_down``
    [E_r, dim, expert_dim] (``expert_parameters``: their gradients are complete after backward, the combine's
    backward brings them from every rank). Buffers ``bias`` (the same on every rank) and ``load`` (this rank's
    assignments since the last ``update_bias``) as in DeepSeekMoE.

    With group-limited routing (``moe.n_groups > 1``) the groups must be the nodes: n_groups = world_size /
    ranks_per_node. Raises TypeError unless built from a DeepSeekMoE, ValueError otherwise, or when the experts
    do not split evenly, or for a rank outside [0, world_size).

    Serving with redundant experts ([V3] 3.4, notebook 13): ``phy2log`` int64 [num_replicas], EPLB's placement of
    this layer (``inference.eplb.rebalance_experts``), puts the expert phy2log[s] in physical slot s, rank r
    holding slots r * S .. (r + 1) * S - 1 (S = num_replicas / world_size); a replicated expert's pairs are split
    evenly between its copies (on each rank, the k-th pair of expert e goes to copy k mod its copies). The outputs
    are the layer's own; the copies are trained apart (each its own gradients), so use it to serve. None: expert
    e in slot e, E_r per rank. Raises ValueError for a phy2log that is not 1-D, whose slots do not split evenly
    over the ranks, or that leaves an expert without a slot.
    """

    def __init__(self, moe: DeepSeekMoE, rank: int, world_size: int, ranks_per_node: int = 1,
                 phy2log: torch.Tensor | None = None) -> None:
        arguments.expert_parallel_moe(moe, rank, world_size, ranks_per_node, phy2log)
        with torch.device("meta"):  # DeepSeekMoE's structure and sizes; the weights are moe's, copied below
            super().__init__(moe.dim, moe.expert_dim, moe.n_routed_experts, moe.n_shared_experts, moe.top_k,
                             moe.n_groups, moe.topk_groups, moe.route_scale)
        self.rank, self.world_size, self.ranks_per_node = rank, world_size, ranks_per_node
        n = moe.n_routed_experts
        phy2log = torch.arange(n) if phy2log is None else phy2log.detach().long().cpu()
        self.experts_per_rank = e_r = len(phy2log) // world_size  # physical slots per rank
        copies = torch.bincount(phy2log, minlength=n)  # [n]
        log2phy = torch.full((n, int(copies.max())), -1, dtype=torch.int64)  # each expert's slots
        for slot, e in enumerate(phy2log.tolist()):
            log2phy[e, int((log2phy[e] >= 0).sum())] = slot
        self.phy2log, self.log2phy, self.copies = phy2log, log2phy, copies
        mine = phy2log[rank * e_r:(rank + 1) * e_r]
        self.expert_linear = moe.expert_linear
        self.centroids = nn.Parameter(moe.centroids.detach().clone())
        self.w_gate = nn.Parameter(moe.w_gate.detach()[mine].clone())
        self.w_up = nn.Parameter(moe.w_up.detach()[mine].clone())
        self.w_down = nn.Parameter(moe.w_down.detach()[mine].clone())
        self.shared = copy.deepcopy(moe.shared)
        self.bias = moe.bias.detach().clone()
        self.load = torch.zeros_like(moe.bias)
        self.last_send_splits: list[int] = []  # rows sent to each rank in the last dispatch
        self.last_recv_splits: list[int] = []  # rows received from each rank

    def extra_repr(self) -> str:
        held = self.phy2log[self.rank * self.experts_per_rank:(self.rank + 1) * self.experts_per_rank].tolist()
        return (f"rank={self.rank}, world_size={self.world_size}, ranks_per_node={self.ranks_per_node}, "
                f"experts {held} of {self.n_routed_experts}, top_k={self.top_k}, n_groups={self.n_groups}, "
                f"topk_groups={self.topk_groups}")

    def replica_slots(self, experts: torch.Tensor) -> torch.Tensor:
        """The physical slot of each pair: experts int64 [pairs] -> int64 [pairs]. The k-th pair of expert e (in
        pair order) goes to copy k mod copies[e]; without redundant experts, slot = expert."""
        by_expert = experts.argsort(stable=True)
        ordered = experts[by_expert]
        nth = torch.empty_like(experts)
        nth[by_expert] = torch.arange(len(experts), device=experts.device) - torch.searchsorted(ordered, ordered)
        log2phy, copies = self.log2phy.to(experts.device), self.copies.to(experts.device)
        return log2phy[experts, nth % copies[experts]]

    def expert_parameters(self) -> list[nn.Parameter]:
        """This rank's own experts' weights (not replicated)."""
        return [self.w_gate, self.w_up, self.w_down]

    def replicated_parameters(self) -> list[nn.Parameter]:
        """The parameters every rank holds a copy of: the router's centroids and the shared expert."""
        return [self.centroids] + (list(self.shared.parameters()) if self.shared is not None else [])

    def routed_experts(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                       load: torch.Tensor) -> torch.Tensor:
        """Dispatch, local experts, combine. x: [tokens, dim]; weights, indices: [tokens, top_k]; load: [n_routed]
        this rank's pairs per expert -> [tokens, dim], sum over chosen i of g_{i,t} FFN_i(x_t) as in DeepSeekMoE."""
        arguments.check_process_group(self.rank, self.world_size)
        w, e_r = self.world_size, self.experts_per_rank
        slots = self.replica_slots(indices.reshape(-1))  # [pairs]: the physical expert serving each pair
        order = slots.argsort(stable=True)  # pairs by slot = by destination rank (contiguous)
        send_counts = torch.bincount(slots, minlength=w * e_r).view(w, e_r)  # [dest rank, its local slot]
        recv_counts = torch.empty_like(send_counts)  # [source rank, my local expert]
        dist.all_to_all_single(recv_counts, send_counts)  # sizes first: every rank learns what it will receive
        self.last_send_splits = send_counts.sum(dim=1).tolist()
        self.last_recv_splits = recv_counts.sum(dim=1).tolist()
        send = x.index_select(0, order // self.top_k)  # [pairs, dim], one row per (token, expert) pair
        received = all_to_all(send, self.last_recv_splits, self.last_send_splits)  # dispatch: [rows, dim]
        # each received row is one pair for one of my experts: the single-process dispatch with top_k = 1, gate 1
        local_expert = torch.arange(e_r, device=x.device).repeat(w).repeat_interleave(recv_counts.reshape(-1))
        outputs = dispatch.routed_experts(received, received.new_ones(len(received), 1), local_expert[:, None],
                                          self.w_gate, self.w_up, self.w_down, recv_counts.sum(dim=0).float(),
                                          linear=self.expert_linear)  # [rows, dim] FFN_i(row)
        returned = all_to_all(outputs, self.last_send_splits, self.last_recv_splits)  # combine: [pairs, dim]
        gates = weights.reshape(-1).index_select(0, order)[:, None]
        return torch.zeros_like(x).index_add(0, order // self.top_k, returned * gates)

    @torch.no_grad()
    def update_bias(self, gamma: float = 0.001, global_load: bool = True) -> torch.Tensor:
        """``DeepSeekMoE.update_bias`` with the load of the whole step. Call once per optimizer step on every rank.

        global_load=True (right): the load is this rank's counts SUM-all-reduced over the ranks, so every rank
        applies the same update. global_load=False (the bug, for teaching): this rank's counts alone, and the
        ranks' biases drift apart. Returns the load used ([n_routed] float32).
        """
        used = self.load.clone()
        if global_load:
            arguments.check_process_group(self.rank, self.world_size)
            dist.all_reduce(used, op=dist.ReduceOp.SUM)
        return super().update_bias(gamma, used)


def expert_parallel_model(model: TinyDeepSeek, rank: int, world_size: int, ranks_per_node: int = 1) -> TinyDeepSeek:
    """A copy of ``model`` whose DeepSeekMoE layers are replaced by this rank's ExpertParallelMoE (same weights).
    The other modules (embedding, attention, dense FFNs, head, MTP) are replicated (data parallelism)."""
    model = copy.deepcopy(model)
    for block in model.blocks:
        if isinstance(block.ffn, DeepSeekMoE):
            block.ffn = ExpertParallelMoE(block.ffn, rank, world_size, ranks_per_node)
    return model


def expert_parallel_layers(model: nn.Module) -> list[ExpertParallelMoE]:
    """The ExpertParallelMoE layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, ExpertParallelMoE)]
