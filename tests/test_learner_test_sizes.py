"""The smaller sizes some notebooks are tested at (LEARNER_ and SOLUTION_TEST_PARAMETERS in the repo-root
conftest.py) name real knobs of their parameters cells (learner notebooks: of notebooks with exercises) and only
make them smaller: a renamed knob must not silently stop shrinking a test run, nor a typo add a variable the
notebook never reads."""

import ast
import importlib.util

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT, clean, dumps, learner_notebook, read

_spec = importlib.util.spec_from_file_location("repo_root_conftest", REPO_ROOT / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)  # imported by path: tests/conftest.py shadows the name "conftest"
SIZES = {**{("notebooks", k): v for k, v in _conftest.LEARNER_TEST_PARAMETERS.items()},
         **{("solutions", k): v for k, v in _conftest.SOLUTION_TEST_PARAMETERS.items()}}


@pytest.mark.parametrize("folder, name", sorted(SIZES))
def test_sizes_name_knobs_of_the_parameters_cell(folder, name):
    solution = REPO_ROOT / "solutions" / f"{name}.ipynb"
    nb = learner_notebook(solution) if folder == "notebooks" else read(solution)
    if folder == "notebooks":
        assert dumps(nb) != dumps(clean(read(solution))), f"{name} has no exercises: only its solution is run"
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    defaults = {target.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
                if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
    for knob, value in SIZES[folder, name].items():
        assert knob in defaults, f"{name}'s parameters cell has no {knob!r}: {sorted(defaults)}"
        assert 0 < value < defaults[knob], f"{name}: {knob}={value} should be smaller than {defaults[knob]}"
