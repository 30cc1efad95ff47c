"""Widget callbacks draw on a matplotlib ``Figure`` of their own, never through pyplot.

JupyterLab (4.x, with ipykernel 7's subshells) can run a widget's callback in another thread of the kernel, and
ipywidgets' ``interactive_output`` flushes and closes every pyplot figure around each call. A callback that draws
with ``plt.subplots`` shares pyplot's figure registry with those threads, and its figure can be drawn by two threads
at once: the browser test caught the what-if widget of notebook 00 showing a half-drawn, transparent figure on
first render (3 renders in 10 in a loop). ``matplotlib.figure.Figure(...)`` is registered nowhere, so only the
callback draws it. This static check covers every solution notebook, with or without a browser at hand.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from course_lib.machinery.make_notebooks import solution_paths


def pyplot_calls_in_callbacks(source: str) -> list[str]:
    """The ``plt.<name>`` uses inside the functions of a cell that wires widgets (``interactive_output``,
    ``interact`` or ``.observe``), as "function: plt.name"."""
    if not any(hook in source for hook in ("interactive_output(", "interact(", ".observe(")):
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [f"{node.name}: plt.{inner.attr}" for inner in ast.walk(node)
                      if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name)
                      and inner.value.id == "plt"]
    return found


@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.stem)
def test_widget_callbacks_draw_on_a_figure_of_their_own(path):
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            uses = pyplot_calls_in_callbacks(cell.source)
            assert not uses, (f"{path.name} cell {index}: a widget callback draws through pyplot ({uses}); use "
                              f"fig = matplotlib.figure.Figure(figsize=...); ax = fig.subplots(); display(fig)")


def test_the_check_catches_the_pyplot_callback_that_the_browser_test_saw():
    old = ("def what_if(price):\n    fig, ax = plt.subplots(figsize=(7, 2.2))\n    display(fig)\n    plt.close(fig)\n"
           "out = widgets.interactive_output(what_if, {'price': slider})\n")
    assert pyplot_calls_in_callbacks(old) == ["what_if: plt.subplots", "what_if: plt.close"]
    new = old.replace("fig, ax = plt.subplots(figsize=(7, 2.2))", "fig = Figure(figsize=(7, 2.2)); ax = fig.subplots()")
    assert pyplot_calls_in_callbacks(new.replace("    plt.close(fig)\n", "")) == []
