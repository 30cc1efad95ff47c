"""Every notebook on another device: ``make test-gpu`` runs ``pytest tests --device cuda --dtype bfloat16``.

Each solution notebook is executed with papermill, with ``-p device <device>`` and, where its parameters cell has
a ``dtype``, ``-p dtype <dtype>``. (The learner notebooks are the same code with the answers replaced by the
reference; on the CPU, nbval runs both.) The run fails on any error, and on a kept output that differs from the
stored one, except in the cells tagged ``device-dependent``:

- a kept output (``# NBVAL_CHECK_OUTPUT``) is already the same text on every CPU, thread count and torch build
  (docs/CONTRIBUTING.md). Most are computed from fixed numbers or CPU tensors (costs, parameter counts, worked
  examples), so they must also be the same on a GPU: a difference there is a bug, and it fails the run.
- a kept cell whose numbers come from work done on ``device`` or in ``dtype`` (random tensors drawn on the
  device, a loss after training in bfloat16) gets the cell tag ``device-dependent``: on another device it is
  executed but not compared. A tag, not a new metadata key, because ``make notebooks`` keeps tags.

Without ``--device`` these tests are skipped: nbval already runs every notebook on the CPU. The executed
notebooks and the time of each go to ``out/device-<device>/`` (``timings.tsv``: notebook, seconds, parameters).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from course_lib.machinery.make_notebooks import KERNEL_NAME, REPO_ROOT, is_kept, solution_paths

DEVICE_DEPENDENT_TAG = "device-dependent"


def run_parameters(parameter_names: set[str] | dict, device: str, dtype: str) -> dict[str, str]:
    """The papermill parameters for a notebook whose parameters cell defines ``parameter_names``."""
    parameters = {"device": device}
    if "dtype" in parameter_names:
        parameters["dtype"] = dtype
    return parameters


def output_text(cell: nbformat.NotebookNode) -> str:
    """The text a kept cell shows: its streams and the plain text of its results, as nbval compares them."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "\n".join(part.rstrip() for part in parts)


def compared_on_devices(cell: nbformat.NotebookNode) -> bool:
    return is_kept(cell) and DEVICE_DEPENDENT_TAG not in cell.metadata.get("tags", [])


def kept_output_differences(stored: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """The kept outputs compared on every device that differ between the stored and the executed notebook.

    The kept cells are paired in order (papermill adds its parameters cell, which is never kept); a notebook whose
    kept cells do not pair up (a different count, a different source) is a difference too.
    """
    stored_kept = [c for c in stored.cells if is_kept(c)]
    executed_kept = [c for c in executed.cells if is_kept(c)]
    if len(stored_kept) != len(executed_kept):
        return [f"{len(stored_kept)} kept cells stored, {len(executed_kept)} after the run"]
    differences = []
    for number, (before, after) in enumerate(zip(stored_kept, executed_kept), start=1):
        if before.source != after.source:
            differences.append(f"kept cell {number}: its source changed during the run")
        elif compared_on_devices(before) and output_text(before) != output_text(after):
            differences.append(f"kept cell {number} ({before.source.splitlines()[1][:60]!r}...):\n"
                               f"--- stored\n{output_text(before)}\n+++ on the device\n{output_text(after)}")
    return differences


@pytest.mark.slow
@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.stem)
def test_the_notebook_runs_on_the_device(path: Path, device, request):
    if request.config.getoption("--device") is None:
        pytest.skip("runs with --device (make test-gpu); on the CPU nbval runs every notebook")
    papermill = pytest.importorskip("papermill")
    dtype = request.config.getoption("--dtype")
    parameters = run_parameters(papermill.inspect_notebook(str(path)), str(device), dtype)
    out_dir = REPO_ROOT / "out" / f"device-{str(device).replace(':', '-')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters, kernel_name=KERNEL_NAME,
                               cwd=str(path.parent), progress_bar=False)
    seconds = time.perf_counter() - start
    with open(out_dir / "timings.tsv", "a") as timings:
        timings.write(f"{path.stem}\t{seconds:.1f}\t{parameters}\n")
    differences = kept_output_differences(nbformat.read(path, as_version=4),
                                          nbformat.read(out_dir / path.name, as_version=4))
    assert not differences, f"{path.name} on {device}:\n" + "\n".join(differences)


# --- the comparison rule itself, on small notebooks built here (run on the CPU in `make test`) ---

def _notebook(*cells: tuple[str, str, list[str]]) -> nbformat.NotebookNode:
    """A notebook of kept cells given as (source, printed text, tags)."""
    nb = nbformat.v4.new_notebook()
    for source, text, tags in cells:
        cell = nbformat.v4.new_code_cell(source, metadata={"keep_output": True, "tags": tags})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nb.cells.append(cell)
    return nb


def test_device_independent_kept_outputs_must_match():
    stored = _notebook(("# NBVAL_CHECK_OUTPUT\nprint(cost)", "$5.576M\n", []))
    executed = _notebook(("# NBVAL_CHECK_OUTPUT\nprint(cost)", "$5.577M\n", []))
    executed.cells.insert(0, nbformat.v4.new_code_cell('device = "cuda"', metadata={"tags": ["injected-parameters"]}))
    differences = kept_output_differences(stored, executed)
    assert len(differences) == 1 and "$5.577M" in differences[0] and "print(cost)" in differences[0]
    assert kept_output_differences(stored, stored) == []


def test_device_dependent_kept_outputs_are_run_but_not_compared():
    stored = _notebook(("# NBVAL_CHECK_OUTPUT\nprint(loss)", "loss 1.64\n", [DEVICE_DEPENDENT_TAG]))
    executed = _notebook(("# NBVAL_CHECK_OUTPUT\nprint(loss)", "loss 1.66\n", [DEVICE_DEPENDENT_TAG]))
    assert kept_output_differences(stored, executed) == []


def test_kept_cells_that_do_not_pair_up_are_reported():
    stored = _notebook(("# NBVAL_CHECK_OUTPUT\nprint(1)", "1\n", []), ("# NBVAL_CHECK_OUTPUT\nprint(2)", "2\n", []))
    assert kept_output_differences(stored, _notebook(("# NBVAL_CHECK_OUTPUT\nprint(1)", "1\n", [])))


def test_dtype_is_given_only_to_notebooks_that_have_it():
    assert run_parameters({"device", "seed", "steps"}, "cuda", "bfloat16") == {"device": "cuda"}
    assert run_parameters({"device", "dtype"}, "cuda", "bfloat16") == {"device": "cuda", "dtype": "bfloat16"}


def test_every_solution_notebook_has_a_device_parameter():
    papermill = pytest.importorskip("papermill")
    for path in solution_paths():
        assert "device" in papermill.inspect_notebook(str(path)), f"{path.name}: no `device` in its parameters cell"
