"""The course as a learner meets it: JupyterLab in a real (headless) browser.

Starts JupyterLab on 127.0.0.1 with the course kernel, on a copy of the notebooks and a fresh workspace, drives
Debian's chromium through Playwright (which never downloads a browser of its own), runs every cell of each
learner notebook that has widgets, and checks: no error output, the figures render, the widgets are attached, their
first render is drawn (a figure of full size whose pixels are not all one colour, labels not cut), and they respond
to a changed value. One solution notebook is run too, to see the checkers' success lines.
Screenshots go to artifacts/browser/ (not committed). Skipped when chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from course_lib.checks.verdict import PASS_MARK, TODO_MARK
from course_lib.parallel.distributed import free_port
from course_lib.machinery.make_notebooks import REPO_ROOT, dumps, learner_notebook, solution_paths

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
TOKEN = "course-browser-test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


def notebooks_with_widgets() -> list[str]:
    return sorted(p.name for p in solution_paths() if "ipywidgets" in p.read_text())



@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on solutions/ and the learner notebooks they generate (not a learner's saved copies);
    yields (base url, its root folder)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO_ROOT / "solutions", root / "solutions")
    (root / "notebooks").mkdir()
    for solution in solution_paths():
        (root / "notebooks" / solution.name).write_text(dumps(learner_notebook(solution)), encoding="utf-8")
    user_settings = {  # no news popup; every cell in the DOM (no windowing), so every output can be checked
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }
    for plugin, values in user_settings.items():
        path = root / ".settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = free_port()
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={root / '.settings'}",
         f"--LabApp.workspaces_dir={root / '.workspaces'}", "--ServerApp.disable_check_xsrf=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(root / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, root
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """Stop the server by its own process id (and its process group: the kernels go with it)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def wait_until(probe, done, timeout_s: float, interval_s: float = 0.5):
    """Call probe() until done(value) holds or timeout_s pass; return the last value (the caller asserts on it).

    A browser under load paints, decodes and saves later than on a quiet machine: every check of something that
    happens after an action polls for it instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def run_all_cells(browser, base: str, path: str, shot: str, timeout_s: int = 300):
    """Open a notebook in JupyterLab, run all its cells, wait until the kernel is done; return the page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/workspaces/{shot}/tree/{path}?token={TOKEN}&reset")  # a fresh workspace per notebook
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    # The course kernel starts by itself (the notebook's kernelspec); wait until the status bar says it is idle.
    page.get_by_text("Python (DeepSeek-V3 course) | Idle").wait_for(timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.monotonic() + timeout_s
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").evaluate_all("ps => ps.map(p => p.textContent)")
        busy = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        if prompts and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts) and not busy:
            break
        if time.monotonic() > deadline:
            page.screenshot(path=str(ARTIFACTS / f"{shot}-timeout.png"), full_page=True)
            raise AssertionError(f"{path}: cells still running after {timeout_s} s: {prompts}")
        time.sleep(1)
    page.wait_for_timeout(1500)  # let the last outputs and widgets render
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
    return page


def assert_no_errors_and_figures_render(page, path: str, root: Path) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    assert errors.count() == 0, f"{path}: error output in the browser:\n{errors.first.inner_text()[:2000]}"
    figures = page.locator(".jp-OutputArea-output img")
    assert figures.count() > 0, f"{path}: no figure was rendered"
    widths = figures.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert all(w > 0 for w in widths), f"{path}: a figure failed to render (image widths {widths})"
    saved_at = (root / path).stat().st_mtime_ns
    page.keyboard.press("Control+s")  # the saved copy must hold no error output either
    mtime = wait_until(lambda: (root / path).stat().st_mtime_ns, lambda t: t != saved_at, timeout_s=60)
    assert mtime != saved_at, f"{path}: JupyterLab did not save the notebook within 60 s of Ctrl+S"
    saved = nbformat.read(root / path, as_version=4)
    tracebacks = [o for c in saved.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not tracebacks, f"{path}: saved notebook holds errors: {[t['ename'] + ': ' + t['evalue'] for t in tracebacks]}"


PIXEL_SPREAD_JS = """async img => {
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.fillStyle = "white";  // a transparent figure is seen on the page's white
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0, sum = 0, squares = 0;
    for (let i = 0; i < data.length; i += 4) {
        const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
        n += 1; sum += grey; squares += grey * grey;
    }
    const mean = sum / n;
    return Math.sqrt(Math.max(0, squares / n - mean * mean));
}"""


def assert_first_render_is_drawn(cell, path: str, index: int) -> None:
    """The widget's figure is there on its first render, at full size and not blank, and its labels are not cut."""
    images = cell.locator(".jp-OutputArea img")
    assert images.count() >= 1, f"{path}: widget {index + 1} shows no figure on its first render"
    image = images.first
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    box = image.bounding_box()
    assert natural[0] >= 300 and natural[1] >= 100, f"{path}: widget {index + 1}'s figure is {natural} pixels"
    assert box and box["width"] >= 300 and box["height"] >= 100, f"{path}: widget {index + 1}'s figure is clipped: {box}"
    # The spread of the figure's grey levels as the browser decoded it (on a canvas: a screenshot can be taken
    # before the image is painted, and then shows white whatever the figure holds).
    # Polled: under load the widget's output can be re-rendered (a new <img>) while it is being measured.
    spread = wait_until(lambda: images.first.evaluate(PIXEL_SPREAD_JS), lambda v: v > 10, timeout_s=30, interval_s=1)
    if not spread > 10:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        images.first.screenshot(path=str(ARTIFACTS / f"blank-{Path(path).stem}-{index + 1}.png"))
    assert spread > 10, f"{path}: widget {index + 1}'s figure is blank (pixel std {spread:.1f})"
    cut = cell.locator(".widget-slider .widget-label").evaluate_all(
        "labels => labels.filter(l => l.scrollWidth > l.clientWidth + 1).map(l => l.textContent)")
    assert not cut, f"{path}: slider labels cut off: {cut}"


def driven_content(cell) -> list[str]:
    """What a widget cell shows besides its controls: the figures' sources and the printed text."""
    return cell.locator(".jp-OutputArea img, .jp-OutputArea pre").evaluate_all(
        "nodes => nodes.map(n => n.tagName === 'IMG' ? n.src : n.textContent)")


@pytest.mark.parametrize("name", notebooks_with_widgets())
def test_learner_notebook_runs_and_its_widgets_respond(lab, browser, name):
    base, root = lab
    path = f"notebooks/{name}"
    page = run_all_cells(browser, base, path, shot=f"learner-{name.removesuffix('.ipynb')}")
    assert_no_errors_and_figures_render(page, path, root)
    assert page.get_by_text(TODO_MARK).count() > 0 or "BEGIN SOLUTION" not in (REPO_ROOT / "solutions" / name).read_text()

    widget_cells = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider"))
    assert widget_cells.count() > 0, f"{path}: no slider widget is attached"
    for index in range(widget_cells.count()):
        cell = widget_cells.nth(index)
        assert_first_render_is_drawn(cell, path, index)
        before = driven_content(cell)
        handle = cell.locator(".noUi-handle").first
        handle.focus()
        for _ in range(3):
            handle.press("ArrowLeft")
        after = wait_until(lambda: driven_content(cell), lambda now: now != before, timeout_s=60)
        assert after != before, f"{path}: moving slider {index + 1} changed neither plot nor text"
    page.screenshot(path=str(ARTIFACTS / f"learner-{name.removesuffix('.ipynb')}-slider-moved.png"), full_page=True)
    page.close()


def test_solution_notebook_shows_the_success_lines(lab, browser):
    base, root = lab
    name = "00_headline_numbers.ipynb"
    page = run_all_cells(browser, base, f"solutions/{name}", shot="solution-00")
    assert_no_errors_and_figures_render(page, f"solutions/{name}", root)
    passed = page.get_by_text(PASS_MARK)
    assert passed.count() >= 2, "the solved exercises should print their success lines"
    assert page.get_by_text(TODO_MARK).count() == 0
    page.close()
