"""The environment check: one line per check, OK or a fix, and an exit code that says whether to act."""

import subprocess
import sys

import pytest
import torch

from course_lib.machinery import doctor
from course_lib.core import runtime


@pytest.mark.slow  # python -m course_lib.machinery.doctor: about 7 s
def test_this_environment_is_ready():
    result = subprocess.run([sys.executable, "-m", "course_lib.machinery.doctor"], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    for name in ("python", "torch", "threads", "device", "kernel", "widgets", "notebooks"):
        assert any(line.split()[1:2] == [name] for line in lines), f"no line for {name}:\n{result.stdout}"
    assert result.returncode == 0, result.stdout
    assert "All good" in result.stdout


def test_a_missing_kernel_gives_the_command_that_registers_it():
    finding = doctor.check_kernel("no-such-kernel-for-sure")
    assert finding.status == "FIX" and "ipykernel install" in finding.fix


def test_a_crashing_check_is_reported_not_raised(monkeypatch, capsys):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "CHECKS", (doctor.check_python, broken))
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "FIX  broken" in out and "boom" in out


def test_notebooks_out_of_step_is_a_note_not_a_failure(monkeypatch):
    monkeypatch.setattr("course_lib.machinery.make_notebooks.out_of_step", lambda root: ["notebooks/00_x.ipynb is missing"])
    finding = doctor.check_notebooks()
    assert finding.status == "NOTE" and "never cause this" in finding.fix


def _cuda_build_without_a_gpu(monkeypatch, hardware: bool) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(doctor, "gpu_hardware", lambda: hardware)


def test_a_cuda_build_on_a_machine_without_gpu_says_fix_with_the_command(monkeypatch):
    _cuda_build_without_a_gpu(monkeypatch, hardware=False)
    finding = doctor.check_torch()
    assert finding.status == "FIX" and "no GPU" in finding.detail
    release = torch.__version__.split("+")[0]
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={release}" in finding.fix
    assert "make clean && make lab" in finding.fix


def test_a_cuda_build_that_cannot_use_the_gpu_points_at_the_driver(monkeypatch):
    _cuda_build_without_a_gpu(monkeypatch, hardware=True)
    finding = doctor.check_torch()
    assert finding.status == "FIX" and "driver" in finding.fix


def test_the_thread_count_and_its_reason_are_reported(monkeypatch):
    choice = runtime.ThreadChoice(torch.get_num_threads(), "cpu budget", "the smallest of torch's default 8, "
                                  "8 CPU(s) in the affinity mask, a cgroup quota of 1 CPU(s) (/sys/fs/cgroup/cpu.max)")
    monkeypatch.setattr(runtime, "THREADS", choice)
    finding = doctor.check_threads()
    assert finding.ok and f"uses {choice.threads} intra-op thread(s)" in finding.detail
    assert "cpu.max" in finding.detail and "COURSE_NUM_THREADS" in finding.detail


def test_a_bad_thread_setting_says_fix(monkeypatch):
    choice = runtime.ThreadChoice(torch.get_num_threads(), "cpu budget", "the smallest of ...",
                                  "COURSE_NUM_THREADS='two' is not a positive integer, so it was ignored.")
    monkeypatch.setattr(runtime, "THREADS", choice)
    finding = doctor.check_threads()
    assert finding.status == "FIX" and "'two'" in finding.detail and "positive integer" in finding.fix
