"""Every place that states what a notebook costs (its own introduction, the README's table, the workshop guide)
states what docs/notebook_costs.json measured (tools/measure_notebooks.py), and every notebook fits a Binder-sized
machine. A place that differs: run `.venv/bin/python tools/measure_notebooks.py --restate` (or measure again)."""

import pytest

from course_lib import notebook_costs
from course_lib.make_notebooks import REPO_ROOT, read, solution_paths

MACHINE, COSTS = notebook_costs.load()
BINDER_BYTES = 10**9  # mybinder.org gives a session 1-2 GB; the course keeps each notebook within 1 GB


def test_every_notebook_was_measured():
    assert sorted(COSTS) == sorted(p.stem for p in solution_paths())


@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.stem)
def test_the_introduction_states_the_measured_cost(path):
    source = read(path).cells[0].source
    assert notebook_costs.restate_introduction(source, COSTS[path.stem], MACHINE) == source, (
        f"{path.name}: the first cell should say: {notebook_costs.statement(COSTS[path.stem], MACHINE)}")


@pytest.mark.parametrize("doc, restate", [("README.md", notebook_costs.restate_readme),
                                          ("docs/WORKSHOP.md", notebook_costs.restate_workshop)])
def test_the_tables_state_the_measured_costs(doc, restate):
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    assert restate(text, COSTS) == text, f"{doc} states other figures than docs/notebook_costs.json"
    assert restate(text, {}) == text  # the table is there to restate: every notebook row matched
    assert sum(f"{name[:2]} " in text or f"`{name}`" in text for name in COSTS) == len(COSTS)


@pytest.mark.parametrize("name", sorted(COSTS))
def test_every_notebook_fits_a_binder_machine(name):
    assert COSTS[name].peak_bytes <= BINDER_BYTES, f"{name} peaks at {COSTS[name].memory_text}"


@pytest.mark.parametrize("seconds, text", [(3, "~5 s"), (19.9, "~20 s"), (57, "~55 s"), (58, "~1 min"),
                                           (100, "~1.5 min"), (134, "~2 min"), (136, "~2.5 min")])
def test_time_text(seconds, text):
    assert notebook_costs.NotebookCost(seconds, 0).time_text == text
