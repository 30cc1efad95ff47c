"""Repository-wide pytest settings.

A learner notebook without exercises is byte-for-byte its solution notebook; executing both would only double
the time of the notebook tests, so only the solution is executed.
"""

from pathlib import Path


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix == ".ipynb" and collection_path.parent.name == "notebooks":
        solution = collection_path.parent.parent / "solutions" / collection_path.name
        if solution.exists() and solution.read_bytes() == collection_path.read_bytes():
            return True
    return None
