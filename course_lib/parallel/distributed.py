"""Process groups for the course's distributed code: set one up (torchrun or a local launch), and run a function
on N local processes with a bounded wall time.

torch.distributed runs one process per rank. Each process joins a *process group* through a rendezvous (an
address and port on rank 0); collectives (all_reduce, all_to_all_single, ...) then block until every rank of the
group has called them. Two rules keep a failing run from hanging forever:

- every group is created with a ``timeout``: a collective that waits longer for a missing peer raises
  (gloo: RuntimeError) instead of blocking;
- ``run_ranks`` waits for its processes until a deadline, then kills what is left and says which ranks hung.

On the CPU the backend is ``gloo``; on GPUs ``nccl`` (one GPU per rank, ``cuda:LOCAL_RANK``). Under torchrun
(``torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel``) ``init_from_env`` reads RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment torchrun sets.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from course_lib.core.validation import boundary
from course_lib.parallel import arguments

class DistributedRunError(RuntimeError):
    """Some ranks of a ``run_ranks`` launch failed or hung. ``errors``: rank -> the rank's traceback (text);
    ``hung``: the ranks still running at the deadline (killed)."""

    def __init__(self, errors: dict[int, str], hung: list[int]) -> None:
        self.errors, self.hung = errors, hung
        lines = [f"{len(errors)} rank(s) failed, {len(hung)} hung (killed at the deadline: {hung})"]
        for rank, text in sorted(errors.items()):
            last = text.strip().splitlines()[-1] if text.strip() else "(no message)"
            lines.append(f"  rank {rank}: {last}")
        super().__init__("\n".join(lines))


def free_port() -> int:
    """A TCP port that is free on this machine now (for the rendezvous of a local launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _import_dynamo_first() -> None:
    """Import torch._dynamo before a process group exists, so that ``dist.destroy_process_group`` really ends it.

    torch._dynamo, imported by the first optimizer step or ``torch.compile``, keeps references to the process
    groups that exist when it is first imported (torch 2.13: ten to the default group). A group so held outlives
    destroy_process_group: its gloo worker threads run on, and when one of them drops its last collective's
    tensors while the interpreter exits, it needs the GIL, the exiting interpreter ends the thread, and the
    process aborts ('terminate called without an active exception', SIGABRT) after the run printed everything.
    Imported first, it holds no group, and destroy_process_group joins the group's threads before returning."""
    import torch._dynamo  # noqa: F401  (for its side effect only)


@boundary(arguments.init_process_group)
def init_process_group(rank: int, world_size: int, port: int, backend: str = "gloo", timeout_s: float = 60.0,
                       address: str = "127.0.0.1") -> torch.device:
    """Join the default process group as ``rank`` of ``world_size`` (rendezvous at ``address:port``), with
    collectives that raise after ``timeout_s`` seconds instead of hanging. Returns this rank's device: cpu for
    gloo, ``cuda:rank % n_gpus`` for nccl. Raises ValueError for an unknown or unusable backend, a rank outside
    [0, world_size) or a timeout_s <= 0."""
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    _import_dynamo_first()
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return device


@boundary(arguments.init_from_env)
def init_from_env(backend: str = "gloo", timeout_s: float = 60.0) -> torch.device:
    """Join the default process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). Returns this rank's device (cpu for gloo, ``cuda:LOCAL_RANK`` for nccl). Raises ValueError for
    an unknown or unusable backend, RuntimeError when torchrun's variables are not set."""
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    _import_dynamo_first()
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def leave_process_group(completed: bool) -> None:
    """End this process's part of the default group (nothing if it has none). ``completed``: this rank got through
    all its collectives, as every rank should have; it then first waits at a barrier, so that no rank closes its
    connections while a peer still needs them (a slower peer still connecting in init_process_group: gloo raises
    'Connection closed by peer' there). After a failure no barrier: the others may never reach it."""
    if not dist.is_initialized():
        return
    try:
        if completed:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, fn: Callable[..., Any], world_size: int, port: int, backend: str, timeout_s: float,
               out_dir: str, args: tuple) -> None:
    """Body of each process of ``run_ranks``: join the group, run fn, save its result or its traceback."""
    torch.set_num_threads(1)
    outcome: dict[str, Any] = {}
    try:
        init_process_group(rank, world_size, port, backend, timeout_s)
        outcome["result"] = fn(rank, world_size, *args)
        leave_process_group(completed=True)
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises DistributedRunError)
        outcome["error"] = traceback.format_exc()
    finally:
        leave_process_group(completed=False)
    torch.save(outcome, Path(out_dir) / f"rank{rank}.pt")


def _rank_context() -> Any:
    """The multiprocessing context of ``run_ranks``: 'forkserver' where the platform has it (Linux, macOS), with
    torch and torch._dynamo (see ``_import_dynamo_first``) preloaded; else 'spawn'. Each rank is then a fork of one
    server process that imported them once, and the ranks share its pages (about 200 MB) instead of each importing
    torch anew; like spawn, a rank inherits none of the caller's state (its threads, its CUDA context). The server
    starts at the first launch of the calling process and serves its later launches."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo"])
    return context


@boundary(arguments.run_ranks)
def run_ranks(fn: Callable[..., Any], world_size: int, args: tuple = (), backend: str = "gloo",
              timeout_s: float = 30.0, deadline_s: float = 120.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new local processes that form a process group, and
    return the ranks' results, rank 0 first.

    fn must be importable by name (a module-level function) and its result picklable by ``torch.save``. The
    processes are started by a server process that has torch imported (``_rank_context``). Each process uses one
    thread (torch.set_num_threads(1)). ``timeout_s`` is the process group's timeout (a collective
    waiting longer for a peer raises); ``deadline_s`` bounds the whole launch. Raises DistributedRunError when a
    rank raised or was still running at the deadline (then it is killed): never hangs. Raises TypeError /
    ValueError for a world_size that is not an int >= 1, timeouts <= 0, an unknown backend, or an fn that a new
    process cannot import by name.
    """
    context = _rank_context()
    with tempfile.TemporaryDirectory(prefix="course_ranks_") as out_dir:
        port = free_port()
        processes = [context.Process(target=_rank_main, args=(rank, fn, world_size, port, backend, timeout_s,
                                                              out_dir, args), daemon=True)
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        end = time.monotonic() + deadline_s
        for process in processes:
            process.join(max(0.0, end - time.monotonic()))
        hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
        for rank in hung:
            processes[rank].kill()
            processes[rank].join()
        results, errors = [], {}
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pt"
            if rank in hung:
                continue
            if not path.exists():
                errors[rank] = f"the process exited with code {processes[rank].exitcode} without a result"
                continue
            outcome = torch.load(path, weights_only=False)
            if "error" in outcome:
                errors[rank] = outcome["error"]
            else:
                results.append(outcome["result"])
    if errors or hung:
        raise DistributedRunError(errors, hung)
    return results
