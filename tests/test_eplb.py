"""EPLB (course_lib.inference.eplb, issue 23): the README's published example exactly, the two-replicas-on-one-GPU
example of the facts file, the properties of every placement, each piece against a slow loop, and the busiest GPU
against the brute-force optimum on tiny cases (EPLB is a greedy heuristic: how far from the optimum it may land is
what ``test_busiest_gpu_within_a_bound_of_the_optimum`` states)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.inference.eplb import (balanced_packing, logical_to_physical, rebalance_experts, replicate_experts,
                                       uses_hierarchical)
from course_lib.inference.expert_placement import gpu_experts, gpu_loads, imbalance, static_placement

README_WEIGHT = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                              [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_readme_example_exactly():
    """deepseek-ai/EPLB's README: 2 layers of 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs (hierarchical)."""
    phy2log, log2phy, logcnt = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    assert uses_hierarchical(4, 2)
    assert phy2log.tolist() == README_PHY2LOG
    # logcnt: how often each expert appears in phy2log; log2phy as the released eplb.py returns it for this input
    # (copy r of expert e in log2phy[l, e, r]; the original first, the redundant copy in the order it was made)
    assert logcnt.tolist() == [[p.count(e) for e in range(12)] for p in README_PHY2LOG]
    assert log2phy.tolist() == [
        [[12, -1], [15, 13], [11, -1], [6, -1], [7, 5], [0, 2], [1, -1], [3, -1], [4, -1], [9, -1], [8, 10],
         [14, -1]],
        [[13, -1], [15, 11], [8, -1], [14, -1], [9, -1], [10, 12], [2, 4], [0, -1], [6, 3], [7, -1], [1, -1],
         [5, -1]]]
    assert all(e not in gpu[:j] for layer in gpu_experts(phy2log, 8) for gpu in layer
               for j, e in enumerate(gpu))  # here no GPU holds two copies of one expert


def test_two_replicas_may_share_a_gpu():
    """The facts file's example: global policy, both replicas of expert 6 land on GPU 3."""
    phy2log, _, logcnt = rebalance_experts(torch.tensor([[36, 194, 25, 159, 65, 137, 181, 155]]), 12, 1, 1, 4)
    assert gpu_experts(phy2log, 4)[0][3].count(6) == 2
    assert logcnt[0, 6] == 2


@st.composite
def deployments(draw, max_layers=3):
    """(weight [layers, n], num_replicas, num_groups, num_nodes, num_gpus) that rebalance_experts accepts."""
    num_nodes = draw(st.sampled_from([1, 2, 4]))
    num_gpus = num_nodes * draw(st.integers(1, 3))
    num_groups = draw(st.sampled_from([1, 2, 4, 8]))
    n = num_groups * draw(st.integers(1, 4))
    num_replicas = num_gpus * (-(-n // num_gpus) + draw(st.integers(0, 2)))
    layers = draw(st.integers(1, max_layers))
    integer = draw(st.booleans())
    values = st.integers(0, 20) if integer else st.floats(0, 100, allow_nan=False)
    weight = torch.tensor(draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=layers,
                                        max_size=layers)), dtype=torch.float32)
    return weight, num_replicas, num_groups, num_nodes, num_gpus


@settings(max_examples=60, deadline=None)
@given(deployments())
def test_every_placement_is_a_placement(case):
    weight, num_replicas, num_groups, num_nodes, num_gpus = case
    phy2log, log2phy, logcnt = rebalance_experts(*case)
    layers, n = weight.shape
    assert phy2log.shape == (layers, num_replicas) and logcnt.shape == (layers, n)
    assert (logcnt >= 1).all()  # every logical expert has a replica
    assert (logcnt.sum(dim=1) == num_replicas).all()
    for layer in range(layers):
        assert torch.bincount(phy2log[layer], minlength=n).tolist() == logcnt[layer].tolist()
        assert all(len(gpu) == num_replicas // num_gpus for gpu in gpu_experts(phy2log, num_gpus)[layer])
        for e in range(n):  # log2phy inverts phy2log: expert e's slots, then -1
            slots = log2phy[layer, e, :logcnt[layer, e]]
            assert sorted(slots.tolist()) == [p for p in range(num_replicas) if phy2log[layer, p] == e]
            assert (log2phy[layer, e, logcnt[layer, e]:] == -1).all()
    loads = gpu_loads(weight, phy2log, num_gpus)
    assert torch.allclose(loads.sum(dim=1), weight.double().sum(dim=1))  # the split keeps every token
    if uses_hierarchical(num_groups, num_nodes):  # a group's experts all live on one node
        per_node, group_size = num_replicas // num_nodes, n // num_groups
        for layer in range(layers):
            groups = [set((phy2log[layer, k * per_node:(k + 1) * per_node] // group_size).tolist())
                      for k in range(num_nodes)]
            assert sum(len(g) for g in groups) == num_groups  # no group on two nodes

# ------------------------------------------------------------------------------------------- the slow loops
def slow_packing(weights: list[float], num_packs: int) -> tuple[list[int], list[int]]:
    """Heaviest first (lower index on a tie), each into the lightest pack with room (the first on a tie); the
    packs' totals in float32, as the loads are."""
    per_pack = len(weights) // num_packs
    if per_pack == 1:
        return list(range(len(weights))), [0] * len(weights)
    weights = [np.float32(w) for w in weights]
    pack, rank = [None] * len(weights), [None] * len(weights)
    totals, counts = [np.float32(0)] * num_packs, [0] * num_packs
    for item in sorted(range(len(weights)), key=lambda i: -weights[i]):
        best = None
        for p in range(num_packs):
            if counts[p] < per_pack and (best is None or totals[p] < totals[best]):
                best = p
        pack[item], rank[item] = best, counts[best]
        totals[best] += weights[item]
        counts[best] += 1
    return pack, rank


def slow_replication(weights: list[float], num_phy: int) -> tuple[list[int], list[int], list[int]]:
    """One copy each, then each slot to the highest load per replica (the first on a tie), in float32."""
    weights = [np.float32(w) for w in weights]
    phy2log, rank, count = list(range(len(weights))), [0] * len(weights), [1] * len(weights)
    while len(phy2log) < num_phy:
        best = 0
        for e in range(len(weights)):
            if weights[e] / count[e] > weights[best] / count[best]:
                best = e
        phy2log.append(best)
        rank.append(count[best])
        count[best] += 1
    return phy2log, rank, count


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2 ** 31 - 1))
def test_pieces_against_slow_loops(num_packs, per_pack, rows, seed):
    weight = torch.rand(rows, num_packs * per_pack, generator=torch.Generator().manual_seed(seed)) * 100
    pack, rank = balanced_packing(weight, num_packs)
    for row in range(rows):
        assert (pack[row].tolist(), rank[row].tolist()) == slow_packing(weight[row].tolist(), num_packs)
    num_phy = weight.shape[1] + per_pack
    phy2log, copy, count = replicate_experts(weight, num_phy)
    for row in range(rows):
        expected = slow_replication(weight[row].tolist(), num_phy)
        assert (phy2log[row].tolist(), copy[row].tolist(), count[row].tolist()) == expected


def slow_rebalance(weight: list[float], num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
                   ) -> tuple[list[int], list[int], list[int]]:
    """One layer of EPLB from the slow loops: (phy2log, copy number of each slot, copies of each expert)."""
    if num_groups % num_nodes:  # the global policy
        num_groups = num_nodes = 1
    n = len(weight)
    size = n // num_groups
    group_load = [float(np.float32(sum(np.float32(w) for w in weight[g * size:(g + 1) * size])))
                  for g in range(num_groups)]
    node_of, place_of = slow_packing(group_load, num_nodes)
    phy2log, phyrank, logcnt = [None] * num_replicas, [None] * num_replicas, [None] * n
    per_node, per_gpu = num_replicas // num_nodes, num_replicas // num_gpus
    for node in range(num_nodes):
        groups = sorted((g for g in range(num_groups) if node_of[g] == node), key=lambda g: place_of[g])
        experts = [g * size + j for g in groups for j in range(size)]
        local, rank, count = slow_replication([weight[e] for e in experts], per_node)
        shares = [float(np.float32(weight[experts[m]]) / np.float32(count[m])) for m in local]
        gpu, place = slow_packing(shares, num_gpus // num_nodes)
        for i, m in enumerate(local):
            slot = node * per_node + gpu[i] * per_gpu + place[i]
            phy2log[slot], phyrank[slot] = experts[m], rank[i]
        for m, e in enumerate(experts):
            logcnt[e] = count[m]
    return phy2log, phyrank, logcnt


@settings(max_examples=60, deadline=None)
@given(deployments())
def test_rebalance_against_a_slow_loop(case):
    weight, num_replicas, num_groups, num_nodes, num_gpus = case
    phy2log, log2phy, logcnt = rebalance_experts(*case)
    for layer in range(weight.shape[0]):
        expected, copy, count = slow_rebalance(weight[layer].tolist(), num_replicas, num_groups, num_nodes, num_gpus)
        assert phy2log[layer].tolist() == expected
        assert logcnt[layer].tolist() == count
        for slot in range(num_replicas):  # log2phy: copy r of expert e sits in slot log2phy[e, r]
            assert log2phy[layer, expected[slot], copy[slot]] == slot


def test_placement_helpers_against_slow_loops():
    weight = torch.tensor([[6.0, 3, 1, 2], [0, 4, 4, 0]])
    phy2log = torch.tensor([[0, 1, 0, 2, 3, 1], [1, 2, 0, 3, 1, 2]])
    expected = []
    for layer in range(2):
        row = []
        for gpu in range(3):
            total = 0.0
            for slot in range(2 * gpu, 2 * gpu + 2):
                e = phy2log[layer, slot].item()
                total += weight[layer, e].item() / phy2log[layer].tolist().count(e)
            row.append(total)
        expected.append(row)
    loads = gpu_loads(weight, phy2log, 3)
    assert loads.tolist() == expected
    assert imbalance(loads).tolist() == [max(r) / (sum(r) / 3) for r in expected]
    assert gpu_experts(static_placement(1, 4, 2), 2) == [[[0, 1], [2, 3]]]


# ------------------------------------------------------------------------------------- against the optimum
def splits(items: list[float], per: int):
    """Every way to cut ``items`` into groups of ``per`` (each group listed once)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for others in itertools.combinations(range(len(rest)), per - 1):
        left = [rest[i] for i in range(len(rest)) if i not in others]
        for tail in splits(left, per):
            yield [[first, *(rest[i] for i in others)], *tail]


def optimum(weights: list[float], num_replicas: int, num_gpus: int) -> float:
    """The smallest busiest-GPU load over every replica count and every placement with equal slots per GPU."""
    n, best = len(weights), float("inf")
    for extra in itertools.combinations_with_replacement(range(n), num_replicas - n):
        count = [1 + extra.count(e) for e in range(n)]
        items = [weights[e] / count[e] for e in range(n) for _ in range(count[e])]
        best = min(best, *(max(sum(g) for g in split) for split in splits(items, num_replicas // num_gpus)))
    return best


RATIO_BOUND = 1.5  # tested bound; the worst the course found on such cases is 4/3 (e.g. loads [3.6, 0.04])


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 4), st.integers(1, 2), st.integers(0, 3), st.integers(0, 2 ** 31 - 1))
def test_busiest_gpu_within_a_bound_of_the_optimum(num_gpus, per_gpu, fewer, seed):
    num_replicas = num_gpus * per_gpu
    n = max(1, num_replicas - fewer)
    weights = (torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 10 + 0.01).tolist()
    phy2log = rebalance_experts(torch.tensor([weights]), num_replicas, 1, 1, num_gpus).phy2log
    busiest = gpu_loads(torch.tensor([weights]), phy2log, num_gpus).max().item()
    best = optimum(weights, num_replicas, num_gpus)
    assert best <= busiest * (1 + 1e-6)
    assert busiest <= RATIO_BOUND * best * (1 + 1e-6), (weights, num_replicas, num_gpus)


def test_greedy_is_not_optimal_here():
    """Why a bound and not equality: loads [3.6, 0.04] on 4 slots of 2 GPUs. Replication gives the hot expert 3
    copies (1.2 each); its 3 copies and the cold expert pack as 2.4 | 1.24, while 2 + 2 copies pack as 1.82 | 1.82."""
    weights = [3.6, 0.04]
    phy2log = rebalance_experts(torch.tensor([weights]), 4, 1, 1, 2).phy2log
    busiest = gpu_loads(torch.tensor([weights]), phy2log, 2).max().item()
    assert busiest == pytest.approx(2.4)
    assert optimum(weights, 4, 2) == pytest.approx(1.82)
