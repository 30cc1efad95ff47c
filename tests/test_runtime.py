"""The device helper, the seeding helper, and the choice of torch's threads."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import get_device, seed_everything
from course_lib.core import runtime


def test_auto_picks_an_available_device():
    device = get_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected


def test_cpu_and_device_objects_are_accepted():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_gives_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        get_device("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="expected one of"):
        get_device("tpu")


def test_seed_makes_every_generator_repeat():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(3)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed_is_rejected(bad):
    with pytest.raises(ValueError):
        seed_everything(bad)


# --- torch's threads: the CPU budget (cgroup quota, affinity) and the overrides, on fake cgroup files ---

def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup tree under tmp_path/cgroup and a fake /proc/self/cgroup holding ``proc_line``."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text + "\n")
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


@pytest.mark.parametrize("proc_line, files, expected", [
    ("0::/", {"cpu.max": "150000 100000"}, (1.5, "cpu.max")),  # cgroup v2, the container's own root
    ("0::/", {"cpu.max": "max 100000"}, None),  # v2 without a limit
    ("0::/user/session", {"user/session/cpu.max": "max 100000", "user/cpu.max": "200000 100000",
                          "cpu.max": "400000 100000"}, (2.0, "user/cpu.max")),  # the smallest level applies
    ("0::/docker/abc", {"cpu.max": "100000 100000"}, (1.0, "cpu.max")),  # a host path absent inside: the root
    ("0::/", {"unified/cpu.max": "50000 100000"}, (0.5, "unified/cpu.max")),  # hybrid layout
    ("4:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/cpu.cfs_quota_us": "250000",
                                   "cpu,cpuacct/cpu.cfs_period_us": "100000"}, (2.5, "cpu,cpuacct/cpu.cfs_quota_us")),
    ("1:cpu:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1 without a limit
    ("1:cpu:/", {"cpu/cpu.cfs_quota_us": "garbage", "cpu/cpu.cfs_period_us": "100000"}, None),  # malformed
    ("0::/", {"cpu.max": "150000"}, None),  # malformed v2
    ("4:memory:/x", {"memory/memory.max": "1"}, None),  # no cpu controller at all
])
def test_cgroup_quota_is_read_from_v1_and_v2_files(tmp_path, proc_line, files, expected):
    root, proc = _cgroup(tmp_path, proc_line, files)
    found = runtime.cgroup_cpu_quota(root, proc)
    if expected is None:
        assert found is None
    else:
        assert found == (expected[0], root / expected[1])


def test_no_proc_cgroup_means_no_quota(tmp_path):
    assert runtime.cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None


@pytest.mark.parametrize("torch_default, affinity, cpus, expected", [
    (16, 16, 1.0, 1),  # mybinder.org: torch sees the host's cores, the pod may use one CPU
    (16, 16, 1.5, 1),  # a fraction rounds down: a throttled thread makes the others spin
    (16, 16, 0.3, 1),  # never below one thread
    (8, 2, None, 2),  # taskset / docker --cpuset-cpus: the affinity mask
    (4, 16, 6.0, 4),  # never above torch's own default (physical cores)
])
def test_the_budget_is_the_smallest_limit(torch_default, affinity, cpus, expected, tmp_path):
    quota = None if cpus is None else (cpus, tmp_path / "cpu.max")
    choice = runtime.choose_num_threads({}, torch_default, affinity, quota)
    assert choice.threads == expected and choice.source == "cpu budget" and not choice.warning
    assert f"{affinity} CPU(s) in the affinity mask" in choice.reason
    assert ("no cgroup CPU quota" if cpus is None else f"quota of {cpus:g} CPU(s)") in choice.reason


def test_the_affinity_mask_is_read_when_not_given(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert runtime.choose_num_threads({}, torch_default=8, quota=None).threads == 1


def test_the_quota_is_read_from_the_cgroup_files_when_not_given(monkeypatch, tmp_path):
    root, proc = _cgroup(tmp_path, "0::/", {"cpu.max": "100000 100000"})
    monkeypatch.setattr(runtime, "CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "PROC_SELF_CGROUP", proc)
    choice = runtime.choose_num_threads({}, torch_default=8, affinity=8)
    assert choice.threads == 1 and str(root / "cpu.max") in choice.reason


def test_course_num_threads_overrides_everything(tmp_path):
    environ = {"COURSE_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}
    choice = runtime.choose_num_threads(environ, torch_default=8, affinity=1, quota=(1.0, tmp_path))
    assert (choice.threads, choice.source) == (3, "COURSE_NUM_THREADS")


def test_an_explicit_omp_num_threads_is_left_to_torch():
    choice = runtime.choose_num_threads({"OMP_NUM_THREADS": "1"}, torch_default=1, affinity=8, quota=None)
    assert (choice.threads, choice.source) == (1, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_is_ignored_with_a_warning(value):
    choice = runtime.choose_num_threads({"COURSE_NUM_THREADS": value}, torch_default=8, affinity=2, quota=None)
    assert choice.threads == 2 and choice.source == "cpu budget"
    assert "COURSE_NUM_THREADS" in choice.warning and "positive integer" in choice.warning


def test_an_empty_variable_counts_as_unset():
    choice = runtime.choose_num_threads({"COURSE_NUM_THREADS": "", "OMP_NUM_THREADS": " "}, 8, 2, None)
    assert choice.source == "cpu budget" and not choice.warning


def _threads_after_import(**environ: str) -> str:
    """torch's thread count in a fresh interpreter that imports course_lib under ``environ``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_NUM_THREADS", "OMP_NUM_THREADS")} | environ
    code = "import torch, course_lib.core.runtime as r; print(torch.get_num_threads(), r.THREADS.source)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


@pytest.mark.slow
def test_importing_the_package_sets_torch_threads_once():
    assert _threads_after_import(COURSE_NUM_THREADS="1") == "1 COURSE_NUM_THREADS"
    threads, source = _threads_after_import().split(" ", 1)
    assert source == "cpu budget" and 1 <= int(threads) <= runtime.affinity_cpus()
