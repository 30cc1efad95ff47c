"""binder/, environment.yml, pyproject.toml and the Makefile name the same dependencies and the same torch."""

import re
import tomllib

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT

yaml = pytest.importorskip("yaml")
REQUIREMENT_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)")


def _names(requirements) -> set[str]:
    """Package names of requirement strings, leaving out pip options (--extra-index-url, -e .)."""
    return {REQUIREMENT_NAME.match(r.strip()).group(1).lower().replace("_", "-")
            for r in requirements if r.strip() and not r.strip().startswith("-")}


def pyproject_names() -> set[str]:
    return _names(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def binder_names() -> set[str]:
    lines = (REPO_ROOT / "binder" / "requirements.txt").read_text().splitlines()
    return _names(line.split("#")[0] for line in lines)


def conda_names() -> set[str]:
    deps = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = [r for d in deps if isinstance(d, dict) for r in d.get("pip", [])]
    return _names(conda + pip) - {"python", "pip"}


def test_the_same_dependencies_everywhere():
    expected = pyproject_names()
    assert {"torch", "numpy"} <= expected
    assert binder_names() == expected, "binder/requirements.txt differs from pyproject.toml"
    assert conda_names() == expected, "environment.yml differs from pyproject.toml"


def test_the_same_cpu_torch_is_pinned_in_every_set_up():
    makefile_pin = re.search(r"TORCH_SPEC\s*\?=\s*(torch==[\w.]+)", (REPO_ROOT / "Makefile").read_text()).group(1)
    assert makefile_pin in (REPO_ROOT / "binder" / "requirements.txt").read_text().splitlines()
    pip_section = [d for d in yaml.safe_load((REPO_ROOT / "environment.yml").read_text())["dependencies"]
                   if isinstance(d, dict)][0]["pip"]
    assert makefile_pin in pip_section
