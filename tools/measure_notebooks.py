"""Measure what each notebook costs a learner and write docs/notebook_costs.json (course_lib/machinery/notebook_costs.py).

Each learner notebook runs as ``make lab`` gives it (generated from solutions/, exercises unsolved, its default
sizes, the course's default torch threads) from a fresh kernel, with nbclient. A thread samples, every 0.1 s, the
proportional set size (PSS) of the kernel and of every process it starts (notebook 09's ranks) and keeps the
largest sum. Run it on a quiet machine of the class you name. It then restates the figures wherever the course
states them (each notebook's ``**Runs in:**`` line, the README's table, the workshop guide's) and regenerates
notebooks/; tests/test_notebook_costs.py fails when a place and the file disagree::

    .venv/bin/python tools/measure_notebooks.py                          # every notebook
    .venv/bin/python tools/measure_notebooks.py 09_expert_parallelism    # some, keeping the others' entries
    .venv/bin/python tools/measure_notebooks.py --restate                # only restate the file's figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from nbclient import NotebookClient
from tqdm.auto import tqdm

from course_lib.machinery import notebook_costs
from course_lib.machinery.make_notebooks import (REPO_ROOT, clean, current_env_kernel, dumps, generate, learner_notebook, read,
                                       solution_paths)
from course_lib.machinery.notebook_costs import COSTS_FILE, NotebookCost
from course_lib.core.runtime import THREADS


class PeakMemory(threading.Thread):
    """Samples the summed PSS of a process and its descendants until stopped; ``peak`` holds the largest sum."""

    def __init__(self, pid_of: Callable[[], int | None], interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid_of, self.interval_s, self.peak = pid_of, interval_s, 0
        self.finished = threading.Event()

    def sample(self) -> int:
        pid = self.pid_of()
        if pid is None:
            return 0
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:  # a process that ended between the listing and the reading
                pass
        return total

    def run(self) -> None:
        while not self.finished.wait(self.interval_s):
            self.peak = max(self.peak, self.sample())


def measure(solution: Path, timeout_s: int) -> NotebookCost:
    kernel = current_env_kernel()
    client = NotebookClient(learner_notebook(solution), km=kernel, timeout=timeout_s,
                            resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    sampler = PeakMemory(lambda: getattr(kernel.provisioner, "pid", None) if kernel.has_kernel else None)
    sampler.start()
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        sampler.finished.set()
        sampler.join()
    return NotebookCost(seconds=round(seconds, 1), peak_bytes=sampler.peak)


def restate(costs_file: Path) -> None:
    """Write the figures of ``costs_file`` into every place that states them, and regenerate notebooks/."""
    machine, costs = notebook_costs.load(costs_file)
    for path, rewrite in ((REPO_ROOT / "README.md", notebook_costs.restate_readme),
                          (REPO_ROOT / "docs" / "WORKSHOP.md", notebook_costs.restate_workshop)):
        path.write_text(rewrite(path.read_text(encoding="utf-8"), costs), encoding="utf-8")
    for solution in solution_paths():
        nb = read(solution)
        nb.cells[0].source = notebook_costs.restate_introduction(nb.cells[0].source, costs[solution.stem], machine)
        solution.write_text(dumps(clean(nb, solution.name)), encoding="utf-8")
    generate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="names such as 05_tiny_deepseek (default: every notebook)")
    parser.add_argument("--machine", default=f"a {os.cpu_count()}-core {platform.machine().replace('_', '-')} CPU",
                        help="the machine class the figures are stated for (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may take")
    parser.add_argument("--out", type=Path, default=COSTS_FILE)
    parser.add_argument("--restate", action="store_true", help="measure nothing: restate the file's figures")
    args = parser.parse_args(argv)
    if args.restate:
        restate(args.out)
        return 0
    known = {p.stem: p for p in solution_paths()}
    unknown = sorted(set(args.notebooks) - set(known))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; known: {sorted(known)}")
    data = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"notebooks": {}}
    data.update(machine=args.machine, threads=THREADS.threads, measured=time.strftime("%Y-%m-%d"))
    for name in tqdm(args.notebooks or sorted(known), desc="notebooks"):
        cost = measure(known[name], args.timeout)
        data["notebooks"][name] = {"seconds": cost.seconds, "peak_bytes": cost.peak_bytes}
        tqdm.write(f"{name}: {cost.seconds:.1f} s ({cost.time_text}), peak {cost.peak_bytes / 1e9:.2f} GB")
        data["notebooks"] = dict(sorted(data["notebooks"].items()))
        args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")  # after each: nothing lost
    if args.out == COSTS_FILE:
        restate(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
