"""Repository-wide pytest settings.

A learner notebook without exercises is byte-for-byte its solution notebook; executing both would only double
the time of the notebook tests, so only the solution is executed.

Every notebook cell that nbval executes (``make test``: solutions/ and notebooks/) is also held to the course's
limit on text output: a cell whose text (printed streams, and the text of a result that has no richer view)
runs over ``OUTPUT_LINE_LIMIT`` lines fails, with the number of lines it printed. The limit is checked on the
outputs nbval has just received, so no notebook is executed a second time for it.
"""

from pathlib import Path

import pytest

# A screen of JupyterLab shows about 40 lines of output; more than that hides the cells around it.
OUTPUT_LINE_LIMIT = 40


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix == ".ipynb" and collection_path.parent.name == "notebooks":
        solution = collection_path.parent.parent / "solutions" / collection_path.name
        if solution.exists() and solution.read_bytes() == collection_path.read_bytes():
            return True
    return None


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
