"""A learner's saved notebook (JupyterLab's Run All and autosave, an exercise answered, a scratch cell added) never
makes the course's own checks fail, and the regeneration never overwrites it without being told to.

Each test builds a small course (solutions/, the generated notebooks/, committed to git) in a temporary folder and
then saves learner work over a notebook, as JupyterLab does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import course_lib.machinery.make_notebooks as mk

EXERCISE = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
CHECK = ("try:\n    assert double(3) == 6, 'double(3) should be 6'\n    print('correct')\n"
         "except NotImplementedError:\n    print('not answered yet')")
NAME = "07_demo.ipynb"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A committed course of one notebook with one exercise."""
    (tmp_path / "solutions").mkdir()
    nb = new_notebook(cells=[new_markdown_cell("# Demo"), new_code_cell(EXERCISE), new_code_cell(CHECK)])
    (tmp_path / "solutions" / NAME).write_text(mk.dumps(nb), encoding="utf-8")
    mk.generate(tmp_path)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "course")
    return tmp_path


def save_learner_work(root: Path, answer: str) -> str:
    """Save notebooks/NAME as JupyterLab would after Run All: outputs, counts, kernel metadata, the learner's answer
    and a scratch cell of their own. Returns the saved text."""
    path = root / "notebooks" / NAME
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = f"def double(x):\n    {answer}"
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [new_output("stream", text="correct\n")]
    nb.cells.append(new_code_cell("1 / 0  # trying something"))
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    text = nbformat.writes(nb) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def test_a_saved_learner_notebook_is_in_step(course):
    save_learner_work(course, "return 2 * x")
    assert mk.out_of_step(course) == []


def new_notebooks_of_the_learner(root: Path) -> None:
    """File > New > Notebook (Untitled.ipynb, failing) and Duplicate (a copy of the saved work) in notebooks/."""
    failing = new_notebook(cells=[new_code_cell("1 / 0")])
    (root / "notebooks" / "Untitled.ipynb").write_text(nbformat.writes(failing), encoding="utf-8")
    copy = root / "notebooks" / NAME.replace(".ipynb", "-Copy1.ipynb")
    copy.write_text((root / "notebooks" / NAME).read_text(encoding="utf-8"), encoding="utf-8")


def test_a_learners_new_notebooks_are_their_own(course):
    save_learner_work(course, "return 2 * x + 1  # wrong")
    new_notebooks_of_the_learner(course)
    assert mk.out_of_step(course) == []


def test_a_solution_run_and_saved_is_in_step(course):
    path = course / "solutions" / NAME
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].outputs = [new_output("stream", text="correct\n")]
    nb.cells[2].execution_count = 2
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    assert mk.out_of_step(course) == []


def test_a_stale_notebook_is_still_found_under_saved_work(course):
    save_learner_work(course, "return 2 * x")
    solution = course / "solutions" / NAME
    solution.write_text(solution.read_text(encoding="utf-8").replace("# Demo", "# Demo, revised"), encoding="utf-8")
    assert mk.out_of_step(course) == [f"notebooks/{NAME} is not what solutions/{NAME} generates"]


def test_regenerating_never_overwrites_saved_work(course):
    saved = save_learner_work(course, "return 2 * x")
    solution = course / "solutions" / NAME
    solution.write_text(solution.read_text(encoding="utf-8").replace("# Demo", "# Demo, revised"), encoding="utf-8")
    before = solution.read_text(encoding="utf-8")
    with pytest.raises(mk.SavedWorkError, match=f"notebooks/{NAME}.*nothing was written.*--force"):
        mk.generate(course)
    assert (course / "notebooks" / NAME).read_text(encoding="utf-8") == saved
    assert solution.read_text(encoding="utf-8") == before  # nothing half-written
    mk.generate(course, force=True)
    assert mk.out_of_step(course) == []


def test_the_command_line_says_what_it_kept(course, monkeypatch, capsys):
    save_learner_work(course, "return 2 * x")
    solution = course / "solutions" / NAME
    solution.write_text(solution.read_text(encoding="utf-8").replace("# Demo", "# Demo, revised"), encoding="utf-8")
    generate = mk.generate
    monkeypatch.setattr(mk, "generate", lambda force=False: generate(course, force))
    assert mk.main([]) == 2
    assert "work saved in Jupyter" in capsys.readouterr().err


@pytest.mark.slow  # a pytest run of its own: about 8 s
def test_the_notebook_tests_execute_the_generated_notebook_not_the_saved_one(course):
    """A wrong answer and a failing scratch cell in the saved notebook, a new notebook and a copy of the saved one:
    the course's notebook test still passes, since it executes what solutions/ generates (the root conftest.py)
    and only the notebooks that solutions/ generates."""
    save_learner_work(course, "return 2 * x + 1  # wrong")
    new_notebooks_of_the_learner(course)  # not collected: the learner's own
    shutil.copy(mk.REPO_ROOT / "conftest.py", course / "conftest.py")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--rootdir", str(course), "notebooks", "solutions"],
        capture_output=True, text=True, cwd=course, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 passed" in result.stdout, result.stdout[-3000:]  # two cells of each notebook
