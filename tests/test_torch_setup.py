"""The set-up takes the CPU build of torch (README, "Start"), and fails promptly where that build cannot be had.

On Linux `pip install torch` takes PyPI's CUDA build (about 3 GB with its NVIDIA libraries). The Makefile asks
PyTorch's CPU index for torch through tools/install_torch.py; these tests run that script as the Makefile does,
in a clean environment: no pip configuration (PIP_CONFIG_FILE=/dev/null, a new HOME), so that a machine's own
find-links or mirror (which may hold a CPU wheel) cannot hide what a new user gets. Only what reaching the network
needs (certificates, proxies) is passed through.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT

SCRIPT = REPO_ROOT / "tools" / "install_torch.py"
NETWORK_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
                     "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def _load_script():
    spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install_torch = _load_script()


def clean_environment(home: Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PIP_CONFIG_FILE": os.devnull}
    return env | {name: os.environ[name] for name in NETWORK_VARIABLES if name in os.environ}


def run_script(tmp_path: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=clean_environment(tmp_path), cwd=tmp_path,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


def test_the_makefile_installs_torch_from_the_cpu_index_with_the_script():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"TORCH_INDEX ?= {install_torch.CPU_INDEX}\n" in makefile
    assert 'tools/install_torch.py --spec "$(TORCH_SPEC)" --index "$(TORCH_INDEX)"' in makefile
    spec = makefile.split("TORCH_SPEC  ?= ")[1].split()[0]
    assert spec == install_torch.DEFAULT_SPEC


def test_the_pip_command_asks_the_cpu_index_for_torch_alone_with_a_short_timeout():
    command = install_torch.pip_command("torch==2.13.0", install_torch.CPU_INDEX)
    assert command[command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "--no-deps" in command and "--extra-index-url" not in command  # never PyPI's CUDA build beside it
    assert int(command[command.index("--timeout") + 1]) <= 15 and command[command.index("--retries") + 1] == "1"
    assert "--index-url" not in install_torch.pip_command("torch==2.13.0", "")  # TORCH_INDEX= : pip's usual index


@pytest.mark.slow
def test_a_clean_environment_resolves_the_cpu_build(tmp_path):
    reason = install_torch.unreachable(install_torch.CPU_INDEX)
    if reason:
        pytest.skip(f"{install_torch.CPU_INDEX} cannot be reached from this machine ({reason}): the check of which "
                    f"torch a new user gets needs it")
    report = tmp_path / "report.json"
    result, _ = run_script(tmp_path, "--report", str(report), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    assert [i["metadata"]["name"] for i in installs] == ["torch"]
    torch_entry = installs[0]
    assert torch_entry["download_info"]["url"].startswith("https://download.pytorch.org/")
    if sys.platform == "linux":
        assert torch_entry["metadata"]["version"].endswith("+cpu"), torch_entry["metadata"]["version"]


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts connections and never answers: an index that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.slow
def test_an_index_that_never_answers_fails_promptly_and_says_what_to_do(tmp_path):
    server, port = _silent_server()
    try:
        result, seconds = run_script(tmp_path, "--index", f"http://127.0.0.1:{port}/simple", "--report",
                                     str(tmp_path / "report.json"), timeout=180)
    finally:
        server.close()
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr and "TORCH_INDEX=" in result.stderr, result.stderr[-2000:]
    assert seconds < 60, f"took {seconds:.0f} s"


def test_an_index_that_refuses_fails_at_once(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    result, seconds = run_script(tmp_path, "--index", f"http://127.0.0.1:{port}/simple", "--report",
                                 str(tmp_path / "report.json"), timeout=120)
    assert result.returncode == 1 and "cannot be reached" in result.stderr, result.stderr[-2000:]
    assert seconds < 30, f"took {seconds:.0f} s"


@pytest.mark.parametrize("index, version, platform, wrong", [
    ("https://download.pytorch.org/whl/cpu", "2.13.0+cpu", "linux", False),
    ("https://download.pytorch.org/whl/cpu", "2.13.0", "linux", True),  # PyPI's CUDA build, from another source
    ("https://download.pytorch.org/whl/cpu/", "2.13.0", "darwin", False),  # macOS builds carry no label
    ("", "2.13.0", "linux", False),  # TORCH_INDEX= : the CUDA build was asked for
    ("https://download.pytorch.org/whl/cu128", "2.13.0+cu128", "linux", False),
])
def test_a_torch_that_is_not_the_cpu_build_is_caught(monkeypatch, index, version, platform, wrong):
    monkeypatch.setattr(install_torch.sys, "platform", platform)
    problem = install_torch.not_the_cpu_build(index, version)
    assert (problem is not None) == wrong
    if wrong:
        assert "pip config list" in problem and version in problem


@pytest.mark.slow
def test_pypi_as_an_extra_index_never_gives_the_cuda_build_silently(tmp_path):
    """A common pip configuration (PyPI or a PyPI mirror as extra-index-url): either the CPU index wins (its +cpu
    version sorts above PyPI's), or, where it cannot be reached, the script stops instead of taking PyPI's build."""
    reason = install_torch.unreachable("https://pypi.org/simple/")
    if reason:
        pytest.skip(f"pypi.org cannot be reached from this machine ({reason})")
    report = tmp_path / "report.json"
    start = time.monotonic()
    env = clean_environment(tmp_path) | {"PIP_EXTRA_INDEX_URL": "https://pypi.org/simple"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--report", str(report)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    if result.returncode == 0:
        version = install_torch.resolved_version(str(report))
        assert sys.platform != "linux" or version.endswith("+cpu"), version
    else:
        assert "not the CPU build" in result.stderr or "cannot be reached" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 300
