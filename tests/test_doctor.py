"""The environment check: one line per check, OK or a fix, and an exit code that says whether to act."""

import subprocess
import sys

from course_lib import doctor


def test_this_environment_is_ready():
    result = subprocess.run([sys.executable, "-m", "course_lib.doctor"], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    for name in ("python", "torch", "device", "kernel", "widgets", "notebooks"):
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
    assert doctor.report() is False
    out = capsys.readouterr().out
    assert "FIX  broken" in out and "boom" in out


def test_notebooks_out_of_step_is_a_note_not_a_failure(monkeypatch):
    monkeypatch.setattr("course_lib.make_notebooks.out_of_step", lambda root: ["notebooks/00_x.ipynb is missing"])
    finding = doctor.check_notebooks()
    assert finding.status == "NOTE" and "overwrites" in finding.fix
