"""The functions each rank runs under ``distributed.run_ranks`` (notebook 09 and the tests): the expert-parallel
layer against the single-process one (``layer_worker``), and data + expert parallel training of the tiny model
(``train_worker``).
"""

from __future__ import annotations

import torch

from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE
from course_lib.parallel.expert_parallel.layer import ExpertParallelMoE, expert_parallel_model
from course_lib.parallel.expert_parallel.step import all_reduce_gradients, expert_parallel_step


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
    """Run by every rank: ``step.expert_parallel_step`` with SGD on this rank's share of each global batch in
    ``batches``: equal chunks, or ``shares[r]`` windows for rank r; a batch given as a list of ``world_size``
    tensors gives rank r its r-th (shares of different lengths). Returns {"losses": [...], "state": the model's state_dict after
    training (this rank's experts)}."""
    local = expert_parallel_model(model, rank, world_size, ranks_per_node)
    optimizer = torch.optim.SGD(local.parameters(), lr=lr)
    mine = [b[rank] if isinstance(b, list) else (b.split(shares) if shares else b.chunk(world_size))[rank]
            for b in batches]
    losses = [expert_parallel_step(local, optimizer, tokens, gamma=gamma, grad_clip=grad_clip).loss for tokens in mine]
    return {"losses": losses, "state": {k: v.clone() for k, v in local.state_dict().items()}}


def serve_worker(rank: int, world_size: int, moe: DeepSeekMoE, x: torch.Tensor, phy2log: torch.Tensor | None,
                 ranks_per_node: int = 1) -> dict:
    """Run by every rank: the expert-parallel copy of ``moe`` serving EPLB's placement ``phy2log`` (int64
    [num_replicas], None for none) on this rank's share of the tokens (x: [world_size * n, dim], equal chunks), in
    eval mode. Returns {"out": this rank's output rows, "recv_rows": the rows this rank's slots received}."""
    layer = ExpertParallelMoE(moe, rank, world_size, ranks_per_node, phy2log).eval()
    with torch.no_grad():
        out = layer(x.chunk(world_size)[rank])
    return {"out": out, "recv_rows": sum(layer.last_recv_splits)}
