"""Every cell nbval executes is held to the course's limit on text output (the hook in the root conftest.py)."""

import importlib.util
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from course_lib.machinery.make_notebooks import REPO_ROOT

_spec = importlib.util.spec_from_file_location("root_conftest", REPO_ROOT / "conftest.py")
root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root_conftest)
OUTPUT_LINE_LIMIT, text_lines = root_conftest.OUTPUT_LINE_LIMIT, root_conftest.text_lines


def test_text_lines_counts_what_a_learner_sees():
    assert text_lines([new_output("stream", name="stdout", text="a\nb\n")]) == 2
    assert text_lines([new_output("stream", name="stderr", text="10%\r50%\r100%\n")]) == 1  # a progress line
    assert text_lines([new_output("execute_result", data={"text/plain": "x\ny"}, execution_count=1)]) == 2
    figure = new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBOR"})
    assert text_lines([figure]) == 0


@pytest.mark.slow
def test_a_cell_printing_too_much_fails_under_nbval(tmp_path):
    nb = new_notebook(cells=[new_code_cell(f"print('\\n'.join(map(str, range({OUTPUT_LINE_LIMIT + 1}))))"),
                             new_code_cell(f"print('\\n'.join(map(str, range({OUTPUT_LINE_LIMIT}))))"),
                             new_code_cell(f"list(range({OUTPUT_LINE_LIMIT + 5}))")])  # a long repr as the value
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "long_output.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--nbval-lax",
         "--nbval-current-env", "--rootdir", str(tmp_path), str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert "2 failed, 1 passed" in result.stdout, result.stdout[-3000:]
    assert f"shows {OUTPUT_LINE_LIMIT + 1} lines of text" in result.stdout, result.stdout[-3000:]
