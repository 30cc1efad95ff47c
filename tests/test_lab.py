"""`make lab` as a learner gets it: a terminal of the lab runs the commands the notebooks show (`torchrun ...`) in
the course environment, and the launcher offers the course kernel alone.

The test starts `make lab` itself (the README's command, with LAB_ARGS for a port, a token and no browser), from an
environment whose PATH holds no .venv, opens a terminal through JupyterLab's REST API and types into it over its
websocket, as the browser does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from tornado.websocket import websocket_connect

from course_lib.parallel.distributed import free_port
from course_lib.machinery.make_notebooks import KERNEL_NAME, REPO_ROOT

TOKEN = "course-lab-test"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.slow  # starting `make lab` takes about 15 s, notebook 09's command 12 s



def _get(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[str]:
    """`make lab` running on a free port; yields its base URL."""
    port = free_port()
    home = tmp_path_factory.mktemp("home")  # a learner's home, whose ~/.bashrc puts another python first (pyenv)
    (home / "shims").mkdir()
    (home / "shims" / "python").write_text("#!/bin/sh\necho 'the python of pyenv'\n")
    (home / "shims" / "python").chmod(0o755)
    (home / ".bashrc").write_text(f'export PATH="{home / "shims"}:$PATH"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "COURSE_NUM_THREADS")}
    env.update(PATH=SYSTEM_PATH, SHELL="/bin/bash", HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"))
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS=--no-browser --ip=127.0.0.1 --port={port} --ServerApp.token={TOKEN} "
                        f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{base}/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"`make lab` did not serve within 120 s:\n{(home / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


async def _type_in_a_terminal(base: str, command: str, done: str, timeout_s: float = 90) -> str:
    """Open a lab terminal, type ``command`` and return what it shows until ``done`` appears."""
    request = urllib.request.Request(f"{base}/api/terminals", method="POST", data=b"",
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        name = json.loads(response.read())["name"]
    ws_url = base.replace("http", "ws", 1) + f"/terminals/websocket/{name}?token={TOKEN}"
    connection = await websocket_connect(ws_url)
    screen = ""
    try:
        await connection.write_message(json.dumps(["stdin", command + "\r"]))
        deadline = time.monotonic() + timeout_s
        while done not in screen and time.monotonic() < deadline:
            message = await asyncio.wait_for(connection.read_message(), deadline - time.monotonic())
            if message is None:
                break
            kind, *payload = json.loads(message)
            if kind == "stdout":
                screen += payload[0]
    finally:
        connection.close()
    return screen


def test_a_lab_terminal_runs_the_notebooks_commands(lab):
    # echo's argument is computed by the shell, so the marker is found in its output, not in the typed echo
    screen = asyncio.run(_type_in_a_terminal(
        lab, "command -v python torchrun pip; torchrun --help | head -n 3; echo finished-$((6 * 7))", "finished-42"))
    assert "finished-42" in screen, f"the terminal did not finish the command:\n{screen[-2000:]}"
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    for command in ("python", "torchrun", "pip"):  # the course's, though ~/.bashrc put a pyenv shim first
        assert f"{venv_bin}/{command}" in screen, screen[-2000:]
    assert "usage: torchrun" in screen, screen[-2000:]


def test_the_launcher_offers_the_course_kernel_alone(lab):
    specs = _get(f"{lab}/api/kernelspecs")
    assert sorted(specs["kernelspecs"]) == [KERNEL_NAME], sorted(specs["kernelspecs"])
    assert specs["default"] == KERNEL_NAME, specs["default"]


def test_notebook_09s_command_runs_in_a_lab_terminal(lab):
    """The command notebook 09 shows, exactly as written but shorter (--steps 2), typed into a lab terminal."""
    command = "torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 2"
    # the quotes keep the marker "exit-status-" out of the typed text that the terminal echoes
    screen = asyncio.run(_type_in_a_terminal(lab, f'{command}; echo "exit-status"-$?', "exit-status-", timeout_s=240))
    assert "exit-status-0" in screen, f"the command failed in the lab's terminal:\n{screen[-3000:]}"
    assert "step    2" in screen, screen[-3000:]
