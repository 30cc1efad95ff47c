"""The documentation stands on its own: every relative link in README.md and docs/ points to a file of the
repository, and nothing refers to the course team's own folders outside it (a contributor has only the repo)."""

import re

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "AGENTS.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_point_into_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(REPO_ROOT) and resolved.exists(), f"{doc.name}: broken link {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_reference_to_folders_outside_the_repository(doc):
    text = doc.read_text()
    for outside in ("shared/reference", "shared/seed", "/work/"):
        assert outside not in text, f"{doc.name} refers to {outside}, which a clone of the repository does not have"
