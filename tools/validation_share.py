"""Lines of code and the share of them that validate input, per module of course_lib (issue 19's measure).

    .venv/bin/python tools/validation_share.py [--markdown]

Code lines: lines holding code, without blank lines, comments and docstrings. Validation lines: the whole of a
function whose name says it checks (``check_*``, ``_check*``, ``validate*``, ``expect*``) or of a module of
validators (``arguments.py``); a ``raise`` statement; an ``if`` whose branches only raise or call such checks (its
condition included); a call to such a check as a statement; a loop whose body is only those.
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "course_lib"
CHECK_NAMES = ("check_", "_check", "validate", "_validate", "expect")


def _is_check_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
        return False
    func = node.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    return name.startswith(CHECK_NAMES) or owner == "arguments"


def _only_checks(body: list[ast.stmt]) -> bool:
    return bool(body) and all(_is_validation(s) for s in body)


def _is_validation(node: ast.stmt) -> bool:
    if isinstance(node, ast.Raise) or _is_check_call(node):
        return True
    if isinstance(node, ast.If):
        return _only_checks(node.body) and (not node.orelse or _only_checks(node.orelse))
    if isinstance(node, (ast.For, ast.While)):
        return _only_checks(node.body) and not node.orelse
    return False


def _lines(node: ast.AST) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def measure(path: Path) -> tuple[int, int]:
    """(code lines, validation lines) of one module."""
    source = path.read_text()
    tree = ast.parse(source)
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(tree):  # docstrings are not code
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            code -= _lines(body[0])
    checks: set[int] = set()
    if path.name == "arguments.py":
        checks = set(code)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(CHECK_NAMES):
            checks |= _lines(node)
        elif isinstance(node, ast.stmt) and _is_validation(node):
            checks |= _lines(node)
    return len(code), len(checks & code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        total, checks = measure(path)
        lines = len(path.read_text().splitlines())
        rows.append((str(path.relative_to(PACKAGE.parent)), lines, total, checks))
    if args.markdown:
        print("| module | lines | code lines | validation lines | share |\n|---|---:|---:|---:|---:|")
    for name, lines, total, checks in rows:
        share = f"{100 * checks / total:.0f}%" if total else "-"
        print(f"| `{name}` | {lines} | {total} | {checks} | {share} |" if args.markdown
              else f"{name:45s} {lines:5d} lines {total:5d} code {checks:5d} validation {share:>4s}")


if __name__ == "__main__":
    main()
