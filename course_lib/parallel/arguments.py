"""The checks of the parallel area's boundaries (``core.validation.boundary``): one validator per boundary, named
after it, taking the boundary's parameters by name, raising TypeError for a wrong type and ValueError for a wrong
value with a message that names the argument, what was expected and what was given. The mechanism modules
(``expert_parallel.placement``, ``expert_parallel.traffic``, ``expert_parallel.layer``) hold the computations.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from course_lib.core.validation import check_int
from course_lib.moe.arguments import check_expert_ids, check_integer_tensor


BACKENDS = ("gloo", "nccl")  # torch.distributed's backends for CPUs and for CUDA GPUs


def check_backend(backend: str) -> None:
    """Raise ValueError unless ``backend`` is 'gloo' or 'nccl' and usable here (nccl needs CUDA GPUs)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA GPUs, and none is visible here: use backend='gloo' on the CPU")


def check_importable(fn: Callable[..., Any]) -> None:
    """Raise ValueError unless a new process (forkserver or spawn) can find ``fn`` by its module and name."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if "<" in qualname or module is None or (module == "__main__" and main_file is None):
        raise ValueError(f"run_ranks starts new processes, which import fn by its module and name; "
                         f"{getattr(fn, '__name__', fn)!r} (module {module!r}) cannot be found that way (a lambda, a "
                         f"nested function, or a function defined in a notebook). Put it in a .py file at module level "
                         f"and import it from there.")


# --------------------------------------------------------------------------------------------- process groups
def init_process_group(rank: int, world_size: int, port: int, backend: str, timeout_s: float, address: str) -> None:
    check_backend(backend)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")


def init_from_env(backend: str, timeout_s: float) -> None:
    check_backend(backend)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"{missing} not set: launch with torchrun, e.g. "
                           f"`torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --backend {backend}`")


def run_ranks(fn: Callable[..., Any], world_size: int, args: tuple, backend: str, timeout_s: float,
              deadline_s: float) -> None:
    check_int("world_size", world_size, 1)
    if not (timeout_s > 0 and deadline_s > 0):
        raise ValueError(f"timeout_s and deadline_s must be > 0, got {timeout_s} and {deadline_s}")
    check_backend(backend)
    check_importable(fn)


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


def check_routed_indices(indices: object, n_experts: int) -> None:
    """Raise TypeError / ValueError unless indices is an integer tensor [tokens, top_k] of experts in [0, n_experts)."""
    check_integer_tensor("indices", indices, "[tokens, top_k] ")
    if indices.dim() != 2:
        raise ValueError(f"indices must be [tokens, top_k], got shape {list(indices.shape)}")
    check_expert_ids(indices, n_experts)


def check_rank(rank: int, world_size: int) -> None:
    """Raise TypeError / ValueError unless ``rank`` is an int in [0, world_size)."""
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")


# --------------------------------------------------------------------------------------------- placement
def send_splits(indices: torch.Tensor, n_experts: int, world_size: int) -> None:
    check_placement(n_experts, world_size)
    check_routed_indices(indices, n_experts)


expert_ranks = send_splits  # the same arguments, the same checks


def destination_nodes(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int) -> None:
    check_placement(n_experts, world_size, ranks_per_node)
    check_routed_indices(indices, n_experts)


def dispatch_plan(indices: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int, rank: int) -> None:
    check_placement(n_experts, world_size, ranks_per_node)
    check_rank(rank, world_size)
    check_routed_indices(indices, n_experts)


def traffic(indices: torch.Tensor, source_rank: torch.Tensor, n_experts: int, world_size: int, ranks_per_node: int,
            row_bytes: int) -> None:
    check_placement(n_experts, world_size, ranks_per_node)
    check_routed_indices(indices, n_experts)
    check_int("row_bytes", row_bytes, 1)
    if not isinstance(source_rank, torch.Tensor) or source_rank.is_floating_point() or source_rank.dtype == torch.bool:
        raise TypeError(f"source_rank must be an integer tensor [tokens] of ranks, got {source_rank!r:.80}")
    if source_rank.shape != indices.shape[:1]:
        raise ValueError(f"indices must be [tokens, top_k] and source_rank [tokens], got {list(indices.shape)} and "
                         f"{list(source_rank.shape)}")
    if source_rank.numel() and not (0 <= int(source_rank.min()) and int(source_rank.max()) < world_size):
        raise ValueError(f"source_rank must lie in [0, {world_size}), got {source_rank.min()}..{source_rank.max()}")


# --------------------------------------------------------------------------------------------- the layer
def expert_parallel_moe(moe: Any, rank: int, world_size: int, ranks_per_node: int, phy2log: Any = None) -> None:
    """``ExpertParallelMoE``'s constructor: a DeepSeekMoE whose experts (or EPLB's physical slots, ``phy2log``:
    1-D, every expert in at least one slot) split evenly over the ranks, groups = nodes."""
    from course_lib.moe.layer import DeepSeekMoE

    if not isinstance(moe, DeepSeekMoE):
        raise TypeError(f"ExpertParallelMoE is built from a course_lib.moe.layer.DeepSeekMoE, got {type(moe).__name__}")
    if phy2log is None:
        check_placement(moe.n_routed_experts, world_size, ranks_per_node)
    else:
        check_integer_tensor("phy2log", phy2log, "[num_replicas] ")
        if phy2log.dim() != 1:
            raise ValueError(f"phy2log must be 1-D [num_replicas] (one layer of EPLB's phy2log), got shape "
                             f"{list(phy2log.shape)}")
        check_expert_ids(phy2log, moe.n_routed_experts)
        check_placement(len(phy2log), world_size, ranks_per_node)
        if torch.bincount(phy2log.long().cpu(), minlength=moe.n_routed_experts).min() < 1:
            raise ValueError("phy2log leaves an expert without a slot: every expert needs at least one copy")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    n_nodes = world_size // ranks_per_node
    if moe.n_groups > 1 and moe.n_groups != n_nodes:
        raise ValueError(f"group-limited routing needs groups = nodes: n_groups={moe.n_groups}, but "
                         f"{world_size} ranks / {ranks_per_node} per node = {n_nodes} nodes")


def all_to_all(x: Any, recv_splits: Any, send_splits: Any) -> None:
    """``expert_parallel.layer.all_to_all``: x holds sum(send_splits) rows."""
    if x.shape[0] != sum(send_splits):
        raise ValueError(f"x has {x.shape[0]} rows but send_splits {send_splits} sum to {sum(send_splits)}")


def check_process_group(rank: int, world_size: int) -> None:
    """Raise RuntimeError unless the default process group exists and is rank ``rank`` of ``world_size`` (what an
    ``ExpertParallelMoE`` was built for; a host-side check, no device read-back)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("ExpertParallelMoE needs a process group: call distributed.init_process_group (or "
                           "init_from_env under torchrun) on every rank first")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(f"this layer was built for rank {rank} of {world_size}, but the process "
                           f"group says rank {dist.get_rank()} of {dist.get_world_size()}")
