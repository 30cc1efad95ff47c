"""Where the course's code runs (``get_device``), how it is made repeatable (``seed_everything``), and how
many CPU threads torch uses (``THREADS``, chosen once when ``course_lib`` is imported).

Threads: torch starts one intra-op thread per core it sees, and in a container it sees every core of the host
(mybinder.org gives a pod about one CPU of a many-core machine). Threads beyond the CPUs the process may really
use do not run in parallel: they wait for each other and spin, and a training step gets several times slower.
So the course sets torch's intra-op threads, once, to the smallest of torch's own default, the CPUs in the
process's affinity mask (``os.sched_getaffinity``) and the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded down. ``COURSE_NUM_THREADS=N`` overrides the choice, and
an explicit ``OMP_NUM_THREADS`` (which torch reads at start-up) is left as it is. ``python -m course_lib.machinery.doctor``
prints the number and why.

The choice is made at import, not in ``seed_everything`` or ``get_device``: every way into the course (a
notebook, the training CLI, the benchmarks, the tests, a learner's own script) imports ``course_lib`` before its
first tensor operation, while not every one of them seeds or asks for a device. It only ever lowers torch's
default, so a later ``torch.set_num_threads`` (the CLI's ``--threads``) still wins.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device to run on.

    ``"auto"`` picks CUDA when a GPU is visible, then Apple's MPS, then the CPU. An explicit name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is checked for availability, so a notebook
    parameterised for a GPU fails at once with a clear message on a machine without one.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto' or 'cpu', got {type(device).__name__}")
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N')")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use device='auto' or 'cpu'")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's random generators, and return a torch.Generator seeded the same.

    Call it at the top of a notebook and before each cell whose printed numbers must be repeatable.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the ``with`` block (no dropout, no balancing state updated by an MoE layer's
    forward), then back to the mode it was in, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
THREADS_VARIABLE = "COURSE_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads torch uses in this process, where the number came from, and why.

    ``source`` is ``"COURSE_NUM_THREADS"``, ``"OMP_NUM_THREADS"`` (an explicit setting, used as it is) or
    ``"cpu budget"`` (the smallest of torch's default, the affinity mask and the cgroup quota). ``warning`` names
    an environment variable that was set but not a positive integer (and was ignored).
    """

    threads: int
    source: str
    reason: str
    warning: str = ""


def _positive_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _ancestors(root: Path, relative: str) -> list[Path]:
    """root/relative and each of its parents up to root (a container often sees its cgroup as the mount root, or
    sees a host path that does not exist inside it: then the nearest existing ancestor holds the limit)."""
    folder = root / relative.strip("/") if relative.strip("/") else root
    chain = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def _read_quota_v2(path: Path) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` file ("max 100000" is no limit, "150000 100000" is 1.5 CPUs)."""
    fields = path.read_text().split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = (_positive_int(f) for f in fields)
    return quota / period if quota and period else None


def _read_quota_v1(path: Path) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and its sibling ``cpu.cfs_period_us`` (-1: no limit)."""
    quota = _positive_int(path.read_text())
    period = _positive_int((path.parent / "cpu.cfs_period_us").read_text())
    return quota / period if quota and period else None


def cgroup_cpu_quota(root: Path | None = None, proc_cgroup: Path | None = None) -> tuple[float, Path] | None:
    """The CPU quota of this process's cgroup, in CPUs, and the file that sets it; None when there is none.

    Reads ``/proc/self/cgroup`` to find the process's cgroup under ``root`` (``/sys/fs/cgroup``): cgroup v2
    ``cpu.max`` (also in the hybrid layout, ``root/unified``) and cgroup v1 ``cpu.cfs_quota_us`` under the
    ``cpu`` controller's folder. When several levels set a quota, the smallest applies. Unreadable or malformed
    files count as no quota: this must never stop the course from starting.
    """
    root = CGROUP_ROOT if root is None else root
    proc_cgroup = PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[tuple[float, Path]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, relative = parts
        if hierarchy == "0" and controllers == "":  # cgroup v2
            candidates = [(folder / "cpu.max", _read_quota_v2)
                          for mount in (root, root / "unified") for folder in _ancestors(mount, relative)]
        elif "cpu" in controllers.split(","):  # cgroup v1, mounted as cpu, cpu,cpuacct or cpuacct,cpu
            mounts = [root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            candidates = [(folder / "cpu.cfs_quota_us", _read_quota_v1)
                          for mount in mounts for folder in _ancestors(mount, relative)]
        else:
            continue
        for path, read in candidates:
            try:
                cpus = read(path)
            except (OSError, ValueError):
                continue
            if cpus is not None:
                found.append((cpus, path))
    return min(found, key=lambda item: item[0]) if found else None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_num_threads(environ: Mapping[str, str] | None = None, torch_default: int | None = None,
                       affinity: int | None = None, quota: tuple[float, Path] | None | str = "read") -> ThreadChoice:
    """Decide torch's intra-op thread count (see the module's docstring); changes nothing.

    ``environ`` (default ``os.environ``), ``torch_default`` (default ``torch.get_num_threads()``), ``affinity``
    (default ``affinity_cpus()``) and ``quota`` (default: read with ``cgroup_cpu_quota()``) can be given, for
    tests. A quota rounds down (1.5 CPUs -> 1 thread): a thread that the quota throttles spins the others.
    """
    environ = os.environ if environ is None else environ
    torch_default = torch.get_num_threads() if torch_default is None else torch_default
    warning = ""
    for variable in (THREADS_VARIABLE, "OMP_NUM_THREADS"):
        if not environ.get(variable, "").strip():  # unset or empty: not a setting
            continue
        value = _positive_int(environ[variable])
        if value is None:
            warning += f"{variable}={environ[variable]!r} is not a positive integer, so it was ignored. "
        elif variable == THREADS_VARIABLE:
            return ThreadChoice(value, variable, f"{variable}={value} (set in the environment)", warning.strip())
        else:
            return ThreadChoice(torch_default, variable, f"OMP_NUM_THREADS={value} (set in the environment; "
                                                         f"torch reads it at start-up)", warning.strip())
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_quota() if quota == "read" else quota
    limits = [f"torch's default {torch_default}", f"{affinity} CPU(s) in the affinity mask"]
    threads = min(torch_default, affinity)
    if quota is None:
        limits.append("no cgroup CPU quota")
    else:
        cpus, path = quota
        limits.append(f"a cgroup quota of {cpus:g} CPU(s) ({path})")
        threads = min(threads, max(1, math.floor(cpus)))
    threads = max(1, threads)
    return ThreadChoice(threads, "cpu budget", f"the smallest of {', '.join(limits)}", warning.strip())


def _apply_thread_choice() -> ThreadChoice:
    """Choose the thread count and give it to torch (called once, when the package is imported)."""
    choice = choose_num_threads()
    if choice.warning:
        warnings.warn(f"course_lib: {choice.warning}", RuntimeWarning, stacklevel=2)
    if choice.source != "OMP_NUM_THREADS" and choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice


THREADS: ThreadChoice = _apply_thread_choice()
