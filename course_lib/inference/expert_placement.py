"""What a placement of experts does to the GPUs: which experts each GPU holds, and each GPU's load.

A placement is EPLB's phy2log (``eplb``): int64 [layers, num_replicas], the logical expert in each physical slot,
slots numbered GPU by GPU (GPU g holds slots g * S .. (g + 1) * S - 1, S = num_replicas / num_gpus). Without
redundant experts it is ``static_placement``: expert e on GPU e // (n / num_gpus), as notebook 09's layer places
them. A replicated expert's tokens are split evenly between its copies ([V3] 3.4: the redundant copy serves part
of the hot expert's tokens), so a slot's load is its expert's load / its expert's copies. An expert-parallel step
waits for its busiest GPU: ``imbalance`` = max / mean of the per-GPU loads, 1 when perfectly balanced.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import boundary
from course_lib.inference import arguments


@boundary(arguments.static_placement)
def static_placement(layers: int, n_experts: int, num_gpus: int) -> torch.Tensor:
    """phy2log int64 [layers, n_experts] without redundancy: expert e in slot e, so on GPU e // (n / num_gpus).
    Raises TypeError / ValueError for sizes that are not ints >= 1 or GPUs that do not divide the experts."""
    return torch.arange(n_experts, dtype=torch.int64).repeat(layers, 1)


@boundary(arguments.gpu_experts)
def gpu_experts(phy2log: torch.Tensor, num_gpus: int) -> list[list[list[int]]]:
    """The logical experts each GPU holds, per layer: ``[layer][gpu] -> [expert, ...]`` in slot order (an expert
    may appear twice on one GPU). phy2log: int64 [layers, num_replicas]. Raises TypeError for a non-integer
    phy2log, ValueError for one that is not 2-D or GPUs that do not divide its slots."""
    layers, num_replicas = phy2log.shape
    return phy2log.reshape(layers, num_gpus, num_replicas // num_gpus).tolist()


@boundary(arguments.gpu_loads)
def gpu_loads(expert_load: torch.Tensor, phy2log: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """Each GPU's load: float64 [layers, num_gpus], the sum over its slots of the slot's expert's load divided by
    that expert's copies. expert_load: [layers, n] loads (tokens routed to each logical expert); phy2log: int64
    [layers, num_replicas] with every expert 0..n-1 in at least one slot. The loads' total is kept. Raises
    TypeError / ValueError for bad loads, a phy2log of another number of layers, experts outside [0, n), an expert
    with no slot, or GPUs that do not divide the slots (``arguments.gpu_loads``)."""
    layers, num_replicas = phy2log.shape
    phy2log, load = phy2log.long().cpu(), expert_load.detach().double().cpu()
    copies = torch.zeros_like(load).scatter_add_(1, phy2log, torch.ones(layers, num_replicas, dtype=torch.float64))
    per_slot = (load / copies).gather(1, phy2log)  # [layers, num_replicas]: each copy's share
    return per_slot.view(layers, num_gpus, num_replicas // num_gpus).sum(dim=-1)


@boundary(arguments.imbalance)
def imbalance(gpu_load: torch.Tensor) -> torch.Tensor:
    """max / mean of the per-GPU loads of each layer: float64 [layers] from gpu_load [layers, num_gpus]; 1 is
    perfect balance, 2 means the busiest GPU works twice the average (the step takes twice as long as it would
    balanced). Raises TypeError / ValueError for bad loads or a layer with no load at all."""
    load = gpu_load.detach().double()
    return load.max(dim=-1).values / load.mean(dim=-1)
