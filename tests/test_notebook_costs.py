"""Every place that states what a notebook costs (its own introduction, the README's table, the workshop guide)
states what docs/notebook_costs.json measured (tools/measure_notebooks.py), and every notebook fits a Binder-sized
machine. A place that differs: run `.venv/bin/python tools/measure_notebooks.py --restate` (or measure again)."""

import pytest

from course_lib.machinery import notebook_costs
from course_lib.machinery.make_notebooks import REPO_ROOT, read, solution_paths

BINDER_BYTES = 10**9  # mybinder.org gives a session 1-2 GB; the course keeps each notebook within 1 GB
NAMES = [p.stem for p in solution_paths()]


@pytest.fixture(scope="module")
def measured() -> tuple[str, dict[str, notebook_costs.NotebookCost]]:
    return notebook_costs.load()


def test_every_notebook_was_measured(measured):
    assert sorted(measured[1]) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_introduction_states_the_measured_cost(measured, name):
    machine, costs = measured
    source = read(REPO_ROOT / "solutions" / f"{name}.ipynb").cells[0].source
    assert notebook_costs.restate_introduction(source, costs[name], machine) == source, (
        f"{name}: the first cell should say: {notebook_costs.statement(costs[name], machine)}")


@pytest.mark.parametrize("doc, restate", [("README.md", notebook_costs.restate_readme),
                                          ("docs/WORKSHOP.md", notebook_costs.restate_workshop)])
def test_the_tables_state_the_measured_costs(measured, doc, restate):
    costs = measured[1]
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    assert restate(text, costs) == text, f"{doc} states other figures than docs/notebook_costs.json"
    assert all(f"| {name[:2]} " in text or f"`{name}`" in text for name in costs), f"{doc}: a notebook has no row"


@pytest.mark.parametrize("name", NAMES)
def test_every_notebook_fits_a_binder_machine(measured, name):
    cost = measured[1][name]
    assert cost.peak_bytes <= BINDER_BYTES, f"{name} peaks at {cost.memory_text}"


@pytest.mark.parametrize("seconds, text", [(3, "~5 s"), (19.9, "~20 s"), (57, "~55 s"), (58, "~1 min"),
                                           (100, "~1.5 min"), (134, "~2 min"), (136, "~2.5 min")])
def test_time_text(seconds, text):
    assert notebook_costs.NotebookCost(seconds, 0).time_text == text
