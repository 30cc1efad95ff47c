"""What one MoE layer's all-to-all moves ([V3] 3.2): the bytes of its dispatch and combine, counted from the split
sizes, between ranks and across nodes, for this course's layer (one row per (token, expert) pair) and for V3's
node-deduplicated dispatch (one row per (token, remote node)). ``traffic`` counts them for tokens given with their
ranks; ``gather_traffic`` for the last forward of a model's expert-parallel layers, from every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from course_lib.core.validation import boundary
from course_lib.parallel import arguments
from course_lib.parallel.expert_parallel.layer import expert_parallel_layers
from course_lib.parallel.expert_parallel.placement import node_hits, send_splits


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


@boundary(arguments.traffic)
def traffic(indices: torch.Tensor, source_rank: torch.Tensor, n_experts: int, world_size: int,
            ranks_per_node: int = 1, row_bytes: int = 4) -> Traffic:
    """The ``Traffic`` of one layer for tokens from all ranks.

    indices: int64 [tokens, top_k] chosen experts; source_rank: int64 [tokens], the rank each token lives on;
    row_bytes: bytes of one row (e.g. dim * 4 for float32, dim * 1 for V3's FP8 dispatch).
    Raises TypeError for non-integer indices, source ranks or row_bytes, ValueError for wrong shapes, values out
    of range or row_bytes < 1.
    """
    splits, node_rows = [], []
    for rank in range(world_size):
        mine = indices[source_rank == rank]  # [this rank's tokens, top_k]
        splits.append(tuple(send_splits(mine, n_experts, world_size)))
        node_rows.append(tuple(node_hits(mine, n_experts, world_size, ranks_per_node).sum(dim=0).tolist()))
    return Traffic(tuple(splits), tuple(node_rows), ranks_per_node, row_bytes)


def gather_traffic(model: nn.Module, row_bytes: int) -> list[Traffic]:
    """The ``Traffic`` of the last forward of each ExpertParallelMoE layer of ``model``, gathered from every rank
    (a collective: every rank calls it). row_bytes: bytes of one row (dim x bytes per value)."""
    layers = expert_parallel_layers(model)
    if not layers or any(layer.last_indices is None for layer in layers):
        raise ValueError("gather_traffic needs a model with ExpertParallelMoE layers that have run a forward")
    w, per_node = layers[0].world_size, layers[0].ranks_per_node
    rows = []
    for layer in layers:
        hits = node_hits(layer.last_indices.reshape(-1, layer.top_k), layer.n_routed_experts, w, per_node)
        rows.append(torch.cat([torch.tensor(layer.last_send_splits, device=hits.device), hits.sum(dim=0)]))
    mine = torch.stack(rows)  # [layers, world_size + n_nodes]: send splits, then (token, node) pairs
    everyone = [torch.zeros_like(mine) for _ in range(w)]
    dist.all_gather(everyone, mine)
    return [Traffic(splits=tuple(tuple(e[i, :w].tolist()) for e in everyone),
                    node_rows=tuple(tuple(e[i, w:].tolist()) for e in everyone), ranks_per_node=per_node,
                    row_bytes=row_bytes) for i in range(len(layers))]
