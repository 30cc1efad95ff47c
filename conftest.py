"""Repository-wide pytest settings.

A learner notebook without exercises is byte-for-byte its solution notebook; executing both would only double
the time of the notebook tests, so only the solution is executed.

A learner notebook is executed as solutions/ generates it, never as a learner saved it: JupyterLab saves a
learner's outputs and answers into notebooks/, and the course's tests judge the course, not that work (a wrong
answer there must not fail ``make test``). ``out_of_step`` (tests/test_make_notebooks.py) checks that the
committed notebooks/ is what solutions/ generates.

A learner notebook with exercises differs from its solution only in the exercise cells (stubs that raise
NotImplementedError, and the checkers below them that must explain, not crash). The solution notebook is run at
full size and its kept outputs compared; the learner notebook is run with the smaller sizes of
``LEARNER_TEST_PARAMETERS`` (appended to its ``parameters`` cell, as papermill would), every cell must still run
without error, and a kept output is compared only where its cell differs from the solution's (a cell that is the
same code is compared in the solution's run, at the size its numbers belong to).

A solution notebook whose kept outputs do not depend on its size knobs (or that keeps none) may be listed in
``SOLUTION_TEST_PARAMETERS``: it runs smaller too, every kept output still compared (one that depends on a knob
then fails at once). ``--full-size`` runs every notebook at its own sizes.

Every notebook cell that nbval executes (``make test``: solutions/ and notebooks/) is also held to the course's
limit on text output: a cell whose text (printed streams, and the text of a result that has no richer view)
runs over ``OUTPUT_LINE_LIMIT`` lines fails, with the number of lines it printed. The limit is checked on the
outputs nbval has just received, so no notebook is executed a second time for it.
"""

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import nbval.plugin
import pytest

from course_lib.machinery.make_notebooks import clean, dumps, learner_notebook, learner_version, read

# A screen of JupyterLab shows about 40 lines of output; more than that hides the cells around it.
OUTPUT_LINE_LIMIT = 40

# Size knobs of the learner notebooks' test run; a notebook not listed here runs at its own sizes.
LEARNER_TEST_PARAMETERS: dict[str, dict[str, int]] = {
    "02_load_balance": {"steps": 60},
    "03_aux_loss_free": {"steps": 60, "sim_steps": 50},
    "04_multi_token_prediction": {"steps": 40},
    "05_tiny_deepseek": {"steps": 40, "synthetic_steps": 20},
    "07_multi_head_latent_attention": {"steps": 20, "decode_tokens": 16},
    "08_speculative_decoding": {"steps": 30, "new_tokens": 24},
    "09_expert_parallelism": {"steps": 10},
    "10_fp8_training": {"steps": 10},
    "11_long_context_yarn": {"steps": 20, "finetune_steps": 5, "needle_steps": 20},
    "12_pipeline_parallelism": {"n_micro_batches": 4},
    "13_serving": {"steps": 10, "eval_tokens": 4096},
    "14_grpo": {"pretrain_steps": 40, "rl_steps": 3, "prompts_per_step": 4, "group_size": 4, "n_held_out": 8},
    "15_sparse_attention": {"steps": 10, "warmup_steps": 6, "sparse_steps": 3, "cost_context": 1024},
}
# Size knobs of the solution notebooks' test run (only notebooks whose kept outputs do not depend on them).
SOLUTION_TEST_PARAMETERS: dict[str, dict[str, int]] = {}


def pytest_addoption(parser) -> None:
    parser.addoption("--full-size", action="store_true",
                     help="run the notebooks at their own sizes (not LEARNER_ or SOLUTION_TEST_PARAMETERS)")


def _solution_of(path: Path) -> Path | None:
    """solutions/NAME for a notebook notebooks/NAME that has a source, else None."""
    if path.suffix != ".ipynb" or path.parent.name != "notebooks":
        return None
    solution = path.parent.parent / "solutions" / path.name
    return solution if solution.exists() else None


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix == ".ipynb" and collection_path.parent.name == "notebooks":
        solution = _solution_of(collection_path)
        if solution is None:  # a learner's own notebook (File > New, a duplicate): not the course's to test
            return True
        nb = read(solution)
        if dumps(learner_version(nb, solution.name)) == dumps(clean(nb, solution.name)):  # no exercises
            return True
    return None


class GeneratedLearnerNotebook(nbval.plugin.IPyNbFile):
    """nbval's notebook, read as solutions/ generates it rather than from the file a learner may have saved."""

    def collect(self):
        generated = learner_notebook(_solution_of(Path(str(self.fspath))))
        reader = SimpleNamespace(read=lambda *args, **kwargs: generated)
        with mock.patch.object(nbval.plugin, "nbformat", reader):  # nbval reads the file once, at the top
            yield from super().collect()


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    collected = yield
    if _solution_of(file_path) is None:
        return collected
    return [GeneratedLearnerNotebook.from_parent(parent, path=file_path)
            if type(node) is nbval.plugin.IPyNbFile else node for node in collected]


def pytest_collection_modifyitems(config, items) -> None:
    """Run the notebooks listed in LEARNER_ and SOLUTION_TEST_PARAMETERS smaller (see the module docstring)."""
    if config.getoption("--full-size"):
        return
    solutions: dict[Path, list[str]] = {}
    for item in items:
        path = Path(str(item.fspath))
        cell = getattr(item, "cell", None)  # nbval's notebook cell items
        learner = path.parent.name == "notebooks"
        sizes = (LEARNER_TEST_PARAMETERS if learner else SOLUTION_TEST_PARAMETERS).get(path.stem)
        if sizes is None or cell is None or path.parent.name not in ("notebooks", "solutions"):
            continue
        if "parameters" in cell.metadata.get("tags", []):
            cell.source += "\n# the notebook's test run (conftest.py): smaller sizes\n" + "".join(
                f"{name} = {value!r}\n" for name, value in sizes.items())
        elif learner:
            if path not in solutions:
                solution = read(path.parent.parent / "solutions" / path.name)
                solutions[path] = [c.source for c in solution.cells if c.cell_type == "code"]
            if cell.source in solutions[path]:
                item.options["check"] = False


def text_lines(outputs: list) -> int:
    """The lines of text a list of notebook outputs shows: streams (a carriage return rewrites its line, as in
    JupyterLab), and text/plain of results and displays that have no richer view (an image, HTML, a widget)."""
    text = ""
    for output in outputs:
        if output.get("output_type") == "stream":
            text += output.get("text", "")
        elif output.get("output_type") in ("execute_result", "display_data"):
            data = output.get("data", {})
            if set(data) == {"text/plain"}:
                plain = data["text/plain"]
                text += plain if plain.endswith("\n") else plain + "\n"
    return sum(1 for line in text.split("\n") if line.split("\r")[-1].strip()) if text else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    outputs = getattr(item, "test_outputs", None)  # an nbval cell (nbval.plugin.IPyNbCell) after its run
    if outputs is not None and hasattr(item, "raise_cell_error"):
        lines = text_lines(outputs)
        if lines > OUTPUT_LINE_LIMIT:
            item.raise_cell_error(
                f"Cell output too long: it shows {lines} lines of text, more than the course's limit of "
                f"{OUTPUT_LINE_LIMIT} (one screen). Print a summary, give the returned object a short repr, or end "
                f"the line with ';'.")
    return result
