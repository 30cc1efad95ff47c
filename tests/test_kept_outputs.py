"""Kept outputs (cells with ``# NBVAL_CHECK_OUTPUT``) are the same text on any CPU, thread count and torch build.

Tests of every notebook in solutions/ (so a notebook added later is covered without a change here):

- a scan: no kept output holds a raw torch or numpy repr (``tensor(...)``, ``array(...)``): those print a
  float's last bits differently from one CPU to another. Kept cells print numbers through
  ``course_lib.machinery.formatting`` (fixed decimals) instead.
- two executions (slow) of each notebook up to its last kept cell, under nbval, at the learner notebooks' test
  sizes (a kept output that depends on a size knob fails at once):
  - with another number of torch threads than the suite's own run of the notebooks (1 where the suite runs with
    more, else 2): with the suite's run, the stored text is reproduced with 1 and with 2 threads;
  - with float64 arithmetic (the default dtype float64, the same random data drawn in float32 and widened) at the
    suite's thread count: the stored text must not hang on float32 rounding either. A near-tie that rounding breaks
    (two routing scores equal in decimal, notebook 03 had three) shows up here. A kept cell whose numbers are a
    property of the dtype itself (bytes of a cache) carries the tag ``dtype-dependent``: run, not compared.
  The rest of each notebook is left out: it keeps nothing, and the suite runs it anyway.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib.machinery.make_notebooks import CHECK_OUTPUT_MARK, REPO_ROOT, is_kept
from course_lib.core.runtime import THREADS

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
                               f"through course_lib.machinery.formatting (format_tensor, format_number)")
        assert "set_printoptions" not in cell.source, f"{path.name} cell {index}: use course_lib.machinery.formatting"


def test_the_scan_catches_the_issue_example():
    assert RAW_REPR.search("row sums: tensor([1., 1., 1., 1.]) vs tensor([3.04, 4.27, 4.86, 4.29])")
    assert not RAW_REPR.search("row sums: [1.00, 1.00, 1.00, 1.00] vs [3.04, 4.27, 4.86, 4.29]")


# The learner notebooks' smaller test sizes (the repo-root conftest.py, imported by path: tests/conftest.py shadows
# the name). The re-executions below use them too: a kept output that depended on a size knob would fail at once.
_spec = importlib.util.spec_from_file_location("repo_root_conftest", REPO_ROOT / "conftest.py")
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
TEST_SIZES = _root_conftest.LEARNER_TEST_PARAMETERS

# A kept cell whose numbers are a property of the dtype itself (the bytes of a cache of default-dtype tensors)
# carries this tag: the float64 run executes it but does not compare it.
DTYPE_DEPENDENT_TAG = "dtype-dependent"

# Run first in the float64 copies: the default dtype becomes float64, but every random draw that took the default
# dtype is still drawn in float32 (the same numbers as in the stored run) and then widened, so the data are the same
# and only the arithmetic is float64. A draw with an explicit dtype is left alone.
FLOAT64_PREAMBLE = """\
import torch


def _drawn_in_float32(draw, like):
    def draw_then_widen(*args, dtype=None, **kwargs):
        default = args[0].dtype if like else torch.get_default_dtype()
        if dtype is not None or default != torch.float64:
            return draw(*args, dtype=dtype, **kwargs)
        return draw(*args, dtype=torch.float32, **kwargs).to(torch.float64)
    return draw_then_widen


def _filled_in_float32(fill):
    def fill_then_widen(self, *args, **kwargs):
        if self.dtype != torch.float64:
            return fill(self, *args, **kwargs)
        drawn = fill(torch.empty_like(self, dtype=torch.float32), *args, **kwargs)
        with torch.no_grad():
            self.copy_(drawn)
        return self
    return fill_then_widen


for name in ("randn", "rand"):
    setattr(torch, name, _drawn_in_float32(getattr(torch, name), like=False))
for name in ("randn_like", "rand_like"):
    setattr(torch, name, _drawn_in_float32(getattr(torch, name), like=True))
for name in ("normal_", "uniform_"):  # nn.init draws through these
    setattr(torch.Tensor, name, _filled_in_float32(getattr(torch.Tensor, name)))
torch.set_default_dtype(torch.float64)
"""


def _truncated_copies(folder: Path, float64: bool = False) -> list[Path]:
    """Each solution notebook that keeps outputs, cut after its last kept cell, at the learner test sizes, written
    into ``folder``; with ``float64``, run after FLOAT64_PREAMBLE, its dtype-dependent cells not compared."""
    copies = []
    for path in SOLUTIONS:
        kept = kept_cells(path)
        if not kept:
            continue
        nb = nbformat.read(path, as_version=4)
        nb.cells = nb.cells[: kept[-1][0] + 1]
        for cell in nb.cells:
            tags = cell.metadata.get("tags", [])
            if "parameters" in tags and path.stem in TEST_SIZES:
                cell.source += "\n" + "".join(f"{k} = {v!r}\n" for k, v in TEST_SIZES[path.stem].items())
            if float64 and DTYPE_DEPENDENT_TAG in tags:
                cell.source = cell.source.replace(CHECK_OUTPUT_MARK, "# compared in the float32 runs only")
        if float64:
            nb.cells.insert(0, nbformat.v4.new_code_cell(FLOAT64_PREAMBLE))
        copy = folder / path.name
        nbformat.write(nb, copy)
        copies.append(copy)
    return copies


def _run_nbval(copies: list[Path], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout=300", "--rootdir", str(folder), *map(str, copies)],
        capture_output=True, text=True, cwd=folder, timeout=1500, env=env)


@pytest.mark.slow
def test_kept_outputs_are_the_same_with_another_thread_count(tmp_path):
    threads = 1 if THREADS.threads > 1 else 2  # the suite's own nbval run uses THREADS.count
    copies = _truncated_copies(tmp_path)
    assert copies, "no notebook keeps an output"
    result = _run_nbval(copies, tmp_path, {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                           "COURSE_NUM_THREADS": str(threads)})
    assert result.returncode == 0, f"with {threads} thread(s):\n{result.stdout[-4000:]}"


@pytest.mark.slow
def test_kept_outputs_are_the_same_in_float64(tmp_path):
    copies = _truncated_copies(tmp_path, float64=True)
    result = _run_nbval(copies, tmp_path, {})
    assert result.returncode == 0, f"with float64 arithmetic:\n{result.stdout[-4000:]}"


def test_the_float64_copies_widen_the_same_draws_and_skip_dtype_dependent_cells(tmp_path):
    functions = {name: getattr(torch, name) for name in ("randn", "rand", "randn_like", "rand_like")}
    methods = {name: getattr(torch.Tensor, name) for name in ("normal_", "uniform_")}
    torch.manual_seed(0)
    expected = torch.randn(5), torch.nn.Linear(3, 2).weight.detach().clone()
    try:
        exec(FLOAT64_PREAMBLE, {})  # noqa: S102 - the preamble the notebooks run, tried here
        torch.manual_seed(0)
        drawn, weight = torch.randn(5), torch.nn.Linear(3, 2).weight.detach()
        assert drawn.dtype == weight.dtype == torch.float64
        assert torch.equal(drawn, expected[0].double()) and torch.equal(weight, expected[1].double())
        assert torch.randn(2, dtype=torch.float32).dtype == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)
        for name, function in functions.items():
            setattr(torch, name, function)
        for name, method in methods.items():
            setattr(torch.Tensor, name, method)
    copies = {c.stem: c for c in _truncated_copies(tmp_path, float64=True)}
    cache_cells = [c for c in nbformat.read(copies["07_multi_head_latent_attention"], as_version=4).cells
                   if "tiny_bytes_per_token" in c.source and "cache.nbytes" in c.source]
    assert cache_cells and CHECK_OUTPUT_MARK not in cache_cells[0].source
