"""What each notebook costs a learner, measured: the time of a Run All and its peak memory, on one machine class.

One source for every place that states it (each notebook's introduction, the README's table, the workshop guide):
``docs/notebook_costs.json``, written by ``python tools/measure_notebooks.py``, which runs each learner notebook (as
``make lab`` gives it: exercises unsolved, default sizes, the course's default threads) from a fresh kernel and
polls the memory of the kernel and every process it starts. ``tests/test_notebook_costs.py`` checks that every
place states what the file holds, through the formatting below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

COSTS_FILE = Path(__file__).resolve().parents[2] / "docs" / "notebook_costs.json"


@dataclass(frozen=True)
class NotebookCost:
    """seconds: wall time of a Run All from a fresh kernel (kernel start included); peak_bytes: the largest sum of
    the proportional set size (PSS: shared pages split among the processes sharing them) of the kernel and its
    child processes, sampled every 0.1 s."""

    seconds: float
    peak_bytes: int

    @property
    def time_text(self) -> str:
        """"~35 s" under a minute (to 5 s, at least 5 s), else "~1.5 min" (to half a minute)."""
        if self.seconds < 57.5:
            return f"~{max(5, 5 * round(self.seconds / 5))} s"
        return f"~{round(self.seconds / 30) / 2:g} min"

    @property
    def memory_text(self) -> str:
        """Peak memory in GB (10^9 bytes) to one decimal, e.g. "0.6 GB"."""
        return f"{self.peak_bytes / 1e9:.1f} GB"


def load(path: Path = COSTS_FILE) -> tuple[str, dict[str, NotebookCost]]:
    """(the machine class the costs were measured on, notebook name -> its cost). Raises FileNotFoundError when the
    file is missing, ValueError when it does not hold a machine and a cost for each notebook."""
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        machine = str(data["machine"])
        costs = {name: NotebookCost(float(entry["seconds"]), int(entry["peak_bytes"]))
                 for name, entry in data["notebooks"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: expected {{'machine': str, 'notebooks': {{name: {{'seconds': float, "
                         f"'peak_bytes': int}}}}}}, could not read {error!r}") from None
    return machine, costs


def statement(cost: NotebookCost, machine: str) -> str:
    """The sentence each notebook's introduction holds, word for word."""
    return f"**Runs in:** {cost.time_text} on {machine}, peak memory {cost.memory_text} (measured)."


_README_ROW = re.compile(r"^(\| `(?P<name>\d\d_\w+)` \| .*? \| )[^|]* \| [^|]* \|$", re.MULTILINE)
_WORKSHOP_ROW = re.compile(r"^(\| (?P<number>\d\d) [^|]+\| )[^|]* (\|.*)$", re.MULTILINE)
_STATEMENT = re.compile(r"^\*\*Runs in:\*\*.*$", re.MULTILINE)


def restate_readme(text: str, costs: dict[str, NotebookCost]) -> str:
    """The README with each notebook row's last two cells (CPU time, peak memory) set from ``costs``."""
    def row(match: re.Match) -> str:
        cost = costs.get(match["name"])
        return match[0] if cost is None else f"{match[1]}{cost.time_text} | {cost.memory_text} |"
    return _README_ROW.sub(row, text)


def restate_workshop(text: str, costs: dict[str, NotebookCost]) -> str:
    """The workshop guide with each notebook row's "run all" cell (the second) set from ``costs``."""
    by_number = {name[:2]: cost for name, cost in costs.items()}

    def row(match: re.Match) -> str:
        cost = by_number.get(match["number"])
        return match[0] if cost is None else f"{match[1]}{cost.time_text} {match[3]}"
    return _WORKSHOP_ROW.sub(row, text)


def restate_introduction(source: str, cost: NotebookCost, machine: str) -> str:
    """A notebook's first markdown cell with its ``**Runs in:**`` line set from ``cost`` (added at the end when the
    cell has none)."""
    line = statement(cost, machine)
    if _STATEMENT.search(source):
        return _STATEMENT.sub(lambda _: line, source, count=1)
    return source.rstrip("\n") + "\n\n" + line
