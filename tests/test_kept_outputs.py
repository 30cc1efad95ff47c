"""Kept outputs (cells with ``# NBVAL_CHECK_OUTPUT``) are the same text on any CPU, thread count and torch build.

Two tests of every notebook in solutions/ (so a notebook added later is covered without a change here):

- a scan: no kept output holds a raw torch or numpy repr (``tensor(...)``, ``array(...)``): those print a
  float's last bits differently from one CPU to another. Kept cells print numbers through
  ``course_lib.formatting`` (fixed decimals) instead.
- an execution (slow): each notebook, up to its last kept cell, run under nbval with another number of torch
  threads than the suite's own run of the notebooks (1 where the suite runs with more, else 2); both runs must
  reproduce the stored text, which ``make_notebooks --refresh-kept-outputs`` wrote on another run (so together
  they compare 1 and 2 threads). The rest of each notebook is left out: it keeps nothing, and the suite runs it
  anyway.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.make_notebooks import REPO_ROOT, is_kept
from course_lib.runtime import THREADS

SOLUTIONS = sorted((REPO_ROOT / "solutions").glob("*.ipynb"))
# What a kept output must never contain: reprs whose digits depend on the machine (torch's and numpy's).
RAW_REPR = re.compile(r"\btensor\(|\barray\(|Parameter containing|np\.float|\bdevice='")


def kept_cells(path: Path) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nbformat.read(path, as_version=4).cells) if is_kept(c)]


def output_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_kept_outputs_print_no_raw_repr(path):
    for index, cell in kept_cells(path):
        text = output_text(cell)
        assert text.strip(), f"{path.name} cell {index}: a kept cell with no stored output"
        match = RAW_REPR.search(text)
        assert match is None, (f"{path.name} cell {index} keeps a raw repr ({match.group(0)!r}): print its numbers "
                               f"through course_lib.formatting (format_tensor, format_number)")
        assert "set_printoptions" not in cell.source, f"{path.name} cell {index}: use course_lib.formatting"


def test_the_scan_catches_the_issue_example():
    assert RAW_REPR.search("row sums: tensor([1., 1., 1., 1.]) vs tensor([3.04, 4.27, 4.86, 4.29])")
    assert not RAW_REPR.search("row sums: [1.00, 1.00, 1.00, 1.00] vs [3.04, 4.27, 4.86, 4.29]")


def _truncated_copies(folder: Path) -> list[Path]:
    """Each solution notebook that keeps outputs, cut after its last kept cell, written into ``folder``."""
    copies = []
    for path in SOLUTIONS:
        kept = kept_cells(path)
        if not kept:
            continue
        nb = nbformat.read(path, as_version=4)
        nb.cells = nb.cells[: kept[-1][0] + 1]
        copy = folder / path.name
        nbformat.write(nb, copy)
        copies.append(copy)
    return copies


@pytest.mark.slow
def test_kept_outputs_are_the_same_with_another_thread_count(tmp_path):
    threads = 1 if THREADS.threads > 1 else 2  # the suite's own nbval run uses THREADS.count
    copies = _truncated_copies(tmp_path)
    assert copies, "no notebook keeps an output"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "COURSE_NUM_THREADS": str(threads),
           "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout=300", "--rootdir", str(tmp_path), *map(str, copies)],
        capture_output=True, text=True, cwd=tmp_path, timeout=1500, env=env)
    assert result.returncode == 0, f"with {threads} thread(s):\n{result.stdout[-4000:]}"
