"""Redundant experts for expert-parallel serving: DeepSeek's EPLB ([V3] 3.4; [INFRA] deepseek-ai/EPLB, eplb.py).

In serving, each GPU of an expert-parallel deployment holds some routed experts, and an MoE step lasts as long as
its busiest GPU. EPLB takes each expert's recent load and makes ``num_replicas`` physical experts out of the
``n`` logical ones (``num_replicas - n`` redundant copies of the hot experts), then places them on the GPUs:

    replicate    each redundant slot goes to the expert with the highest load PER REPLICA (load / copies so far)
    pack         balanced packing: items by decreasing load, each into the lightest pack that still has room,
                 every pack receiving the same number of items (each GPU holds num_replicas / num_gpus experts)

Two policies, as the released ``rebalance_experts`` chooses them:
- hierarchical, when the expert groups divide over the nodes (prefill): pack the GROUPS onto nodes (so that
  group-limited routing keeps a token's traffic on few nodes), replicate inside each node, pack each node's
  physical experts onto its GPUs;
- global otherwise (decode): the same with one group and one node.

A replicated expert's tokens are split evenly between its copies (``expert_placement.gpu_loads``). EPLB is a greedy
heuristic: it does not promise the smallest possible busiest GPU (tests/test_eplb.py bounds how far it can be).
Shapes follow eplb.py: weight [layers, n] loads; phy2log [layers, num_replicas] int64, the logical expert of each
physical slot (slots numbered GPU by GPU: GPU g holds slots g * num_replicas / num_gpus onwards); log2phy
[layers, n, max copies] int64, each expert's physical slots, -1 padded; logcnt [layers, n] int64, copies of each.
Ties break towards the lower index everywhere (a stable sort, the first maximum). eplb.py sorts without a stable
sort, so where copies of one expert tie exactly, it may number them in another order in log2phy; phy2log and
logcnt are the same (checked against the released code on the README's example and on random loads).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from course_lib.core.validation import boundary
from course_lib.inference import arguments


def balanced_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the n items of each row into ``num_packs`` packs of n / num_packs items each, as evenly as the greedy
    rule makes them: by decreasing weight, each item into the lightest pack that still has room (the first such
    pack on a tie).

    weight: float [X, n] -> (pack_index, rank_in_pack), both int64 [X, n]: the pack of each item and its place in
    that pack (0 for the first item packed there). With one item per pack, item i goes to pack i (as in eplb.py:
    every assignment is then equally balanced). Unchecked: ``rebalance_experts`` is the boundary.
    """
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        items = torch.arange(n, dtype=torch.int64).expand(rows, n).clone()
        return items, torch.zeros(rows, n, dtype=torch.int64)
    pack_index = torch.empty(rows, n, dtype=torch.int64)
    rank_in_pack = torch.empty(rows, n, dtype=torch.int64)
    order = weight.sort(dim=-1, descending=True, stable=True).indices  # [X, n], heaviest first
    for row in range(rows):
        totals = torch.zeros(num_packs, dtype=weight.dtype)
        counts = [0] * num_packs
        for item in order[row].tolist():
            open_packs = [p for p in range(num_packs) if counts[p] < per_pack]
            pack = min(open_packs, key=lambda p: totals[p].item())  # the lightest; min keeps the first on a tie
            pack_index[row, item], rank_in_pack[row, item] = pack, counts[pack]
            totals[pack] += weight[row, item]
            counts[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: torch.Tensor, num_phy: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Make ``num_phy`` physical experts out of the ``num_log`` logical ones of each row: experts 0..num_log-1 once,
    then each redundant slot to the expert with the highest load per replica (weight / copies so far).

    weight: float [X, num_log] -> (phy2log [X, num_phy], rank [X, num_phy], logcnt [X, num_log]), int64: the
    logical expert of each physical one, which copy of it that is (0 for the original), and each expert's copies.
    Unchecked: ``rebalance_experts`` is the boundary.
    """
    rows, num_log = weight.shape
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(rows, 1)
    rank = torch.zeros(rows, num_phy, dtype=torch.int64)
    logcnt = torch.ones(rows, num_log, dtype=torch.int64)
    every_row = torch.arange(rows)
    for slot in range(num_log, num_phy):
        hottest = (weight / logcnt).argmax(dim=-1)  # [X]: highest load per replica (the first on a tie)
        phy2log[:, slot] = hottest
        rank[:, slot] = logcnt[every_row, hottest]
        logcnt[every_row, hottest] += 1
    return phy2log, rank, logcnt


class Placement(NamedTuple):
    """``rebalance_hierarchical``'s result: phy2log and phyrank [layers, num_replicas] (the expert in each
    physical slot and which copy it is), logcnt [layers, n] (copies of each expert); all int64."""

    phy2log: torch.Tensor
    phyrank: torch.Tensor
    logcnt: torch.Tensor


def rebalance_hierarchical(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                           num_gpus: int) -> Placement:
    """EPLB's hierarchical policy, one layer at a time: groups onto nodes, replication inside each node, each
    node's physical experts onto its GPUs. With num_groups = num_nodes = 1 it is the global policy.

    weight: float [layers, n]. Node k holds physical slots k * num_replicas / num_nodes onwards, and within it the
    groups packed there in their packing order. Unchecked: ``rebalance_experts`` is the boundary.
    """
    layers, n = weight.shape
    group_size, slots_per_node = n // num_groups, num_replicas // num_nodes
    gpus_per_node, slots_per_gpu = num_gpus // num_nodes, num_replicas // num_gpus
    phy2log = torch.empty(layers, num_replicas, dtype=torch.int64)
    phyrank = torch.empty_like(phy2log)
    logcnt = torch.empty(layers, n, dtype=torch.int64)
    group_load = weight.view(layers, num_groups, group_size).sum(dim=-1)  # [layers, num_groups]
    group_node, group_rank = balanced_packing(group_load, num_nodes)  # [layers, num_groups] each
    for layer in range(layers):
        for node in range(num_nodes):
            groups = sorted((g for g in range(num_groups) if group_node[layer, g] == node),
                            key=lambda g: group_rank[layer, g].item())
            experts = torch.tensor([g * group_size + j for g in groups for j in range(group_size)])  # node-local order
            local = weight[layer, experts][None]  # [1, experts on this node]
            node_phy2log, node_rank, node_cnt = replicate_experts(local, slots_per_node)
            per_replica = (local / node_cnt).gather(1, node_phy2log)  # [1, slots_per_node]: each copy's share
            gpu, place = balanced_packing(per_replica, gpus_per_node)
            slots = node * slots_per_node + gpu[0] * slots_per_gpu + place[0]  # where each physical expert goes
            phy2log[layer, slots] = experts[node_phy2log[0]]
            phyrank[layer, slots] = node_rank[0]
            logcnt[layer, experts] = node_cnt[0]
    return Placement(phy2log, phyrank, logcnt)


def logical_to_physical(phy2log: torch.Tensor, phyrank: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy int64 [layers, n, max copies]: log2phy[l, e, r] is the slot of copy r of expert e, -1 past its
    copies. From phy2log and phyrank [layers, num_replicas] and logcnt [layers, n]."""
    layers, num_replicas = phy2log.shape
    log2phy = torch.full((layers, logcnt.shape[1], int(logcnt.max())), -1, dtype=torch.int64)
    every_layer = torch.arange(layers)[:, None].expand(layers, num_replicas)
    log2phy[every_layer, phy2log, phyrank] = torch.arange(num_replicas).expand(layers, num_replicas)
    return log2phy


class Rebalanced(NamedTuple):
    """``rebalance_experts``'s result, in eplb.py's order: phy2log [layers, num_replicas], log2phy [layers, n,
    max copies] (-1 padded), logcnt [layers, n]; all int64."""

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor


def uses_hierarchical(num_groups: int, num_nodes: int) -> bool:
    """Whether ``rebalance_experts`` takes the hierarchical policy: when the groups divide over the nodes."""
    return num_groups % num_nodes == 0


@boundary(arguments.rebalance_experts)
def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> Rebalanced:
    """EPLB's entry point ([INFRA] eplb.py ``rebalance_experts``): replicate and place the experts of each layer.

    weight: [layers, n] the load of each logical expert (any real dtype, any device; computed in float32 on the CPU
    as eplb.py does, and so are the results);
    num_replicas: physical experts per layer (n of them plus the redundant copies), a multiple of num_gpus;
    num_groups: expert groups (of group-limited routing), dividing n; num_nodes: nodes, dividing num_gpus;
    num_gpus: GPUs in all. Hierarchical policy when num_groups % num_nodes == 0, else global. Returns
    ``Rebalanced(phy2log, log2phy, logcnt)`` (module docstring for the shapes). Raises TypeError for a weight that
    is not a real 2-D tensor or sizes that are not ints, ValueError for negative or non-finite loads, fewer
    replicas than experts, GPUs that do not divide the replicas, groups that do not divide the experts, or nodes
    that do not divide the GPUs (``arguments.rebalance_experts``).
    """
    weight = weight.detach().float().cpu()
    if uses_hierarchical(num_groups, num_nodes):
        placed = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        placed = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    return Rebalanced(placed.phy2log, logical_to_physical(*placed), placed.logcnt)
