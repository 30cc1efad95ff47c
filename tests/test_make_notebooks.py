"""The notebook generator: solution blocks become stubs, outputs are stripped, notebooks/ is in step."""

import json
import subprocess

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib.machinery import make_notebooks as mk

SOLUTION_CELL = """def f(x):
    '''Doubles x.'''
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION

def g():
### BEGIN SOLUTION
    return 1
### END SOLUTION"""


def test_solution_blocks_become_indented_stubs():
    assert mk.strip_solution_blocks(SOLUTION_CELL) == """def f(x):
    '''Doubles x.'''
    # YOUR CODE HERE
    raise NotImplementedError()

def g():
# YOUR CODE HERE
raise NotImplementedError()"""


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
])
def test_unmatched_markers_are_errors(source, problem):
    with pytest.raises(mk.NotebookFormatError, match=problem):
        mk.strip_solution_blocks(source, where="nb, cell 3")


def _notebook(*cells):
    nb = new_notebook(cells=list(cells))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell{i}"
    return nb


def test_clean_strips_outputs_but_keeps_marked_cells():
    plain = new_code_cell("print(1)", execution_count=4,
                          outputs=[nbformat.v4.new_output("stream", text="1\n")], metadata={"scrolled": True})
    kept = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)", execution_count=9, metadata={"keep_output": True},
                         outputs=[nbformat.v4.new_output("stream", text="2\n")])
    cleaned = mk.clean(_notebook(new_markdown_cell("# T"), plain, kept))
    assert cleaned.cells[1].outputs == [] and cleaned.cells[1].execution_count is None
    assert cleaned.cells[1].metadata == {}
    assert cleaned.cells[2].outputs[0]["text"] == "2\n"
    assert cleaned.cells[2].execution_count == 2  # its place among code cells, as a fresh run numbers it
    assert cleaned.metadata["kernelspec"]["name"] == mk.KERNEL_NAME


def test_checked_cell_without_keep_output_is_refused():
    with pytest.raises(mk.NotebookFormatError, match="keep_output"):
        mk.clean(_notebook(new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)")))


def test_generate_and_check_round_trip(tmp_path):
    (tmp_path / "solutions").mkdir()
    nb = _notebook(new_code_cell(SOLUTION_CELL, outputs=[nbformat.v4.new_output("stream", text="x")],
                                 execution_count=1))
    (tmp_path / "solutions" / "07_demo.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert mk.out_of_step(tmp_path)  # unstripped, learner version missing
    mk.generate(tmp_path)
    assert mk.out_of_step(tmp_path) == []
    learner = nbformat.read(tmp_path / "notebooks" / "07_demo.ipynb", as_version=4)
    assert "raise NotImplementedError()" in learner.cells[0].source and "2 * x" not in learner.cells[0].source
    (tmp_path / "notebooks" / "07_demo.ipynb").write_text("{}", encoding="utf-8")
    (tmp_path / "notebooks" / "99_orphan.ipynb").write_text("{}", encoding="utf-8")
    problems = mk.out_of_step(tmp_path)
    assert any("not what solutions/07_demo.ipynb generates" in p for p in problems)
    assert not any("99_orphan" in p for p in problems)  # git does not know it: a learner's own notebook
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "orphan committed"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    assert any("99_orphan" in p for p in mk.out_of_step(tmp_path))  # committed without a source: stale


# ------------------------------------------------------------------ the repository's own notebooks
def test_learner_notebooks_are_in_step_with_solutions():
    problems = mk.out_of_step()
    assert problems == [], "\n".join(problems) + "\nRun `make notebooks`."


def test_every_notebook_follows_the_course_conventions():
    paths = mk.solution_paths()
    assert paths, "no solution notebooks found"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        for name in ("device", "seed"):
            assert f"{name} =" in params[0].source, f"{path.name}: the parameters cell should set {name}"
        assert any("seed_everything(seed)" in c.source for c in code), f"{path.name}: never seeds"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: no title"
        exercises = [c for c in code if mk.BEGIN_SOLUTION in c.source]
        for cell in exercises:  # the check cell follows the exercise
            following = code[code.index(cell) + 1]
            assert "check_" in following.source, f"{path.name}: exercise without a check cell right below"
