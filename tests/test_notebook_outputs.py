"""The notebook tests really compare the kept numbers, and papermill's parameters really take effect."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.machinery.make_notebooks import KERNEL_NAME, REPO_ROOT, dumps, is_kept, learner_notebook

SOLUTION = REPO_ROOT / "solutions" / "00_headline_numbers.ipynb"
pytestmark = pytest.mark.slow


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--rootdir", str(path.parent), str(path)],
        capture_output=True, text=True, cwd=path.parent, timeout=600,
    )


def test_a_changed_number_fails_the_notebook_test(tmp_path):
    nb = learner_notebook(SOLUTION)  # the learner notebook, as generated
    kept = [c for c in nb.cells if is_kept(c)]
    assert kept, "notebook 00 should keep the outputs of its key numbers"
    stream = kept[0].outputs[0]
    assert "5.576M" in stream["text"]
    stream["text"] = stream["text"].replace("5.576M", "5.577M")
    changed = tmp_path / SOLUTION.name
    nbformat.write(nb, changed)
    result = _nbval(changed)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "5.577M" in result.stdout and "1 failed" in result.stdout, result.stdout[-2000:]


def test_papermill_parameters_take_effect(tmp_path):
    papermill = pytest.importorskip("papermill")
    source = tmp_path / SOLUTION.name
    source.write_text(dumps(learner_notebook(SOLUTION)), encoding="utf-8")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(source), str(out), kernel_name=KERNEL_NAME, cwd=str(tmp_path),
                               parameters={"price_per_gpu_hour": 3.0, "n_tokens": 512, "seed": 7},
                               progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                   for o in c.get("outputs", []))
    assert "$ 8.364M" in text  # 2.788M GPU-hours at $3
    assert "the batch of 512 tokens" in text
    assert "seed: 7" in text
