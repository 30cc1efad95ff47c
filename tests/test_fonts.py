"""Every character the course shows renders without an emoji font: the checkers' marks, the doctor's lines and the
notebooks' text use only characters that DejaVu (the fonts Debian's chromium and most Linux desktops have) draws.
An emoji such as a green check box showed as an empty box in a browser without an emoji font."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from course_lib.checks.verdict import FAIL_MARK, PASS_MARK, TODO_MARK
from course_lib.machinery.make_notebooks import REPO_ROOT, read, solution_paths

# Emoji blocks, and the symbols in older blocks that browsers draw as emoji (U+2705, U+274C, U+23F3, ...).
EMOJI_RANGES = ((0x1F000, 0x1FAFF), (0x2600, 0x26FF), (0x2700, 0x27BF), (0x2300, 0x23FF), (0xFE0F, 0xFE0F))
BLESSED = {"✓", "✗"}  # U+2713 and U+2717: dingbats that every DejaVu font draws as text


def shown_characters() -> dict[str, str]:
    """Each non-ASCII character of course_lib's source and the notebooks' cells -> a place it occurs."""
    found: dict[str, str] = {}
    for path in sorted((REPO_ROOT / "course_lib").rglob("*.py")):
        for char in path.read_text(encoding="utf-8"):
            if ord(char) > 127:
                found.setdefault(char, str(path.relative_to(REPO_ROOT)))
    for path in solution_paths():
        for index, cell in enumerate(read(path).cells):
            for char in cell.source:
                if ord(char) > 127:
                    found.setdefault(char, f"{path.name} cell {index}")
    return found


def test_the_checkers_marks_are_text_not_emoji():
    for mark in (PASS_MARK, FAIL_MARK, TODO_MARK):
        assert not any(lo <= ord(mark) <= hi for lo, hi in EMOJI_RANGES) or mark in BLESSED, repr(mark)


def test_no_emoji_anywhere_a_learner_reads():
    emoji = {c: where for c, where in shown_characters().items()
             if c not in BLESSED and any(lo <= ord(c) <= hi for lo, hi in EMOJI_RANGES)}
    assert not emoji, f"characters that need an emoji font: {emoji}"


@pytest.mark.skipif(shutil.which("fc-list") is None, reason="fontconfig's fc-list is not installed")
def test_dejavu_draws_every_character():
    families = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True).stdout
    if "DejaVu Sans" not in families:
        pytest.skip("the DejaVu fonts are not installed here")
    missing = {}
    for char, where in shown_characters().items():
        covering = subprocess.run(["fc-list", f":charset={ord(char):x}", "family"], capture_output=True,
                                  text=True).stdout
        if "DejaVu Sans" not in covering:
            missing[char] = where
    assert not missing, f"characters DejaVu Sans cannot draw (an empty box in the browser): {missing}"
