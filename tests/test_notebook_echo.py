"""No notebook cell ends with a call whose result nobody should read: a course function that returns a bool (or
anything) as the last line of a cell is echoed by Jupyter under what it printed (notebook 00's first cell showed a
stray `True` under the doctor's report). Functions that print their answer return None; the checkers do too."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import typing

import pytest

import course_lib
from course_lib.machinery.make_notebooks import read, solution_paths


def course_functions() -> dict[str, object]:
    """Every public function of course_lib's modules, by name (the names notebooks import)."""
    found: dict[str, object] = {}
    for module_info in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
        if module_info.name.endswith(("__main__",)):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isfunction(value) and not name.startswith("_") and value.__module__.startswith("course_lib"):
                found.setdefault(name, value)
    return found


def returns_bool(fn: object) -> bool:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - a hint that does not resolve here says nothing about a bool
        return False
    return hints.get("return") is bool


@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.stem)
def test_no_cell_echoes_a_course_functions_bool(path):
    functions = course_functions()
    echoed = []
    for index, cell in enumerate(read(path).cells):
        if cell.cell_type != "code" or cell.source.strip().startswith(("%", "!")):
            continue
        body = ast.parse(cell.source).body
        last = body[-1] if body else None
        if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name):
            fn = functions.get(last.value.func.id)
            if fn is not None and returns_bool(fn):
                echoed.append(f"cell {index}: {last.value.func.id}(...) returns a bool that Jupyter echoes")
    assert not echoed, f"{path.name}: " + "; ".join(echoed) + " (return None from a function that prints, or end "\
                       "the line with ';')"
