"""Generate the learner notebooks (notebooks/) from the source notebooks (solutions/).

solutions/NN_name.ipynb is the one source of each notebook. In its code cells, an exercise's answer
stands between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the nbgrader convention); the learner
version replaces each such block with::

    # YOUR CODE HERE
    raise NotImplementedError()

Both trees are stored with outputs stripped, except the few cells marked ``"keep_output": true`` in
their metadata: those carry ``# NBVAL_CHECK_OUTPUT`` and their stored output is what the notebook tests
compare on every run.

Usage (from the repository root)::

    python -m course_lib.machinery.make_notebooks                  # strip solutions/, regenerate notebooks/
    python -m course_lib.machinery.make_notebooks --check          # exit 1 if anything is out of step (used by the tests)
    python -m course_lib.machinery.make_notebooks --refresh-kept-outputs 00_headline_numbers
                                                         # run a solution notebook, store its kept outputs

A learner works in notebooks/ and JupyterLab saves there (outputs, answers). The course's checks judge the course
as committed, never that work: ``out_of_step`` accepts a learner notebook with local changes when git's committed
copy is what solutions/ generates, the notebook tests execute the generated version (the root conftest.py), and
``generate`` refuses to overwrite a notebook that Jupyter has saved (``SavedWorkError``) unless forced.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
from pathlib import Path

import nbformat

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
CHECK_OUTPUT_MARK = "# NBVAL_CHECK_OUTPUT"
KERNEL_NAME = "deepseek-v3-course"
KERNELSPEC = {"name": KERNEL_NAME, "display_name": "Python (DeepSeek-V3 course)", "language": "python"}
REPO_ROOT = Path(__file__).resolve().parents[2]
# Cell metadata that is kept; everything else (papermill's timings, "scrolled", "collapsed") is noise.
KEPT_CELL_METADATA = ("tags", "keep_output", "jupyter")


class NotebookFormatError(ValueError):
    """A source notebook breaks a convention of the course (unmatched solution markers, a check without output)."""


class SavedWorkError(RuntimeError):
    """``generate`` would overwrite learner notebooks that Jupyter has saved (outputs, answers); nothing was written.
    ``paths``: those notebooks."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        names = ", ".join(f"notebooks/{p.name}" for p in paths)
        super().__init__(f"work saved in Jupyter (outputs or answers) would be overwritten in {names}, so nothing was "
                         f"written. Move those notebooks out of notebooks/ (for example to out/) and run again, or "
                         f"pass --force to overwrite them.")


def strip_solution_blocks(source: str, where: str = "a cell") -> str:
    """Replace every BEGIN/END SOLUTION block of a code cell's source with the indented stub."""
    lines = source.split("\n")
    out: list[str] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if inside:
                raise NotebookFormatError(f"{where}, line {number}: '{BEGIN_SOLUTION}' inside another solution block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub for stub in STUB)
        elif marker == END_SOLUTION:
            if not inside:
                raise NotebookFormatError(f"{where}, line {number}: '{END_SOLUTION}' without '{BEGIN_SOLUTION}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookFormatError(f"{where}: '{BEGIN_SOLUTION}' is never closed by '{END_SOLUTION}'")
    return "\n".join(out)


def is_kept(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and cell.metadata.get("keep_output") is True


def clean(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return a copy of ``nb`` with outputs stripped (except kept cells), cell metadata pruned and the
    course kernel set. Raises NotebookFormatError when a NBVAL_CHECK_OUTPUT cell is not kept."""
    nb = copy.deepcopy(nb)
    code_cells = 0
    for index, cell in enumerate(nb.cells):
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA})
        if cell.cell_type != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        code_cells += 1
        if CHECK_OUTPUT_MARK in cell.source and not is_kept(cell):
            raise NotebookFormatError(
                f"{name}, cell {index}: it says {CHECK_OUTPUT_MARK} but its metadata lacks \"keep_output\": true, "
                f"so its output would be stripped and nothing compared")
        if is_kept(cell) and cell.outputs:
            # nbval only compares a cell that was run: give it the count a run from the top would give.
            cell.execution_count = code_cells
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = code_cells
        else:
            cell.execution_count = None
            cell.outputs = []
    nb.metadata = nbformat.from_dict({
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        **({"course": nb.metadata["course"]} if "course" in nb.metadata else {}),
    })
    return nb


def learner_version(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The learner notebook generated from a solution notebook."""
    nb = clean(solution, name)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = strip_solution_blocks(cell.source, where=f"{name}, cell {index}")
    return nb


def dumps(nb: nbformat.NotebookNode) -> str:
    """The stored form of a notebook: nbformat's JSON with one-space indents and a final newline."""
    return nbformat.writes(nb, version=4) + "\n"


def solution_paths(root: Path = REPO_ROOT) -> list[Path]:
    return sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)


def learner_notebook(solution: Path) -> nbformat.NotebookNode:
    """The learner notebook that ``solution`` (a path in solutions/) generates: what the tests execute, whatever a
    learner has saved in notebooks/."""
    return learner_version(read(solution), solution.name)


def saved_by_jupyter(text: str) -> bool:
    """Whether a notebook's stored text holds what a Jupyter save adds and the generator strips: outputs, execution
    counts, kernel metadata. Text that is not a notebook at all counts as not saved (nothing to keep)."""
    try:
        return dumps(clean(nbformat.reads(text, as_version=4))) != text
    except Exception:  # noqa: BLE001 - unreadable JSON, a cell that breaks a convention: not a learner's saved work
        return False


def committed_text(path: Path, root: Path = REPO_ROOT) -> str | None:
    """The text of ``path`` in git's HEAD commit, or None (no git, not a repository, not committed)."""
    try:
        result = subprocess.run(["git", "show", f"HEAD:{path.relative_to(root).as_posix()}"], cwd=root,
                                capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.decode("utf-8") if result.returncode == 0 else None


def out_of_step(root: Path = REPO_ROOT) -> list[str]:
    """Problems that ``--check`` reports: unstripped solutions, learner notebooks missing, stale or extra.

    Judged on the course as committed: a notebook whose working copy has local changes (a learner's outputs and
    answers, a solution run and saved) is in step when git's HEAD copy is, and the change is only that; a notebook
    in notebooks/ that git does not know (a learner's new notebook or copy) is the learner's own.
    """
    problems = []
    expected_learner = set()
    for path in solution_paths(root):
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        stripped = dumps(clean(nb, path.name))
        if stripped != text and committed_text(path, root) != stripped:
            problems.append(f"solutions/{path.name} holds outputs or metadata that should be stripped")
        learner = root / "notebooks" / path.name
        expected_learner.add(learner.name)
        expected = dumps(learner_version(nb, path.name))
        if not learner.exists():
            problems.append(f"notebooks/{path.name} is missing")
        elif learner.read_text(encoding="utf-8") != expected and committed_text(learner, root) != expected:
            problems.append(f"notebooks/{path.name} is not what solutions/{path.name} generates")
    for extra in sorted((root / "notebooks").glob("*.ipynb")):
        if extra.name not in expected_learner and committed_text(extra, root) is not None:
            problems.append(f"notebooks/{extra.name} has no source in solutions/")  # a learner's own: not committed
    return problems


def generate(root: Path = REPO_ROOT, force: bool = False) -> list[Path]:
    """Strip every solution notebook in place and write its learner version; return the files written.

    Raises SavedWorkError, before writing anything, when a learner notebook to be rewritten was saved by Jupyter
    (outputs, answers) and ``force`` is False.
    """
    (root / "notebooks").mkdir(exist_ok=True)
    changes = []
    for path in solution_paths(root):
        nb = read(path)
        for target, text in ((path, dumps(clean(nb, path.name))),
                             (root / "notebooks" / path.name, dumps(learner_version(nb, path.name)))):
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                changes.append((target, text))
    saved = [t for t, _ in changes if t.parent.name == "notebooks" and t.exists()
             and saved_by_jupyter(t.read_text(encoding="utf-8"))]
    if saved and not force:
        raise SavedWorkError(saved)
    for target, text in changes:
        target.write_text(text, encoding="utf-8")
    return [target for target, _ in changes]


def current_env_kernel():
    """A jupyter_client KernelManager whose kernel runs this very interpreter, whatever kernel name a notebook
    asks for (as nbval's --nbval-current-env does)."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str):  # noqa: ARG002 - every name maps to the current env
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=CurrentEnvSpecs())


def refresh_kept_outputs(path: Path, timeout: int = 600) -> None:
    """Execute a solution notebook from a fresh kernel and store the outputs of its kept cells."""
    from nbclient import NotebookClient

    nb = read(path)
    executed = copy.deepcopy(nb)
    NotebookClient(executed, km=current_env_kernel(), timeout=timeout, coalesce_streams=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell, run in zip(nb.cells, executed.cells):
        if is_kept(cell):
            cell.outputs = run.outputs
    path.write_text(dumps(clean(nb, path.name)), encoding="utf-8")


def _find_solution(name: str, root: Path = REPO_ROOT) -> Path:
    stem = re.sub(r"\.ipynb$", "", Path(name).name)
    path = root / "solutions" / f"{stem}.ipynb"
    if not path.exists():
        known = ", ".join(p.stem for p in solution_paths(root))
        raise SystemExit(f"no solutions/{stem}.ipynb; known notebooks: {known}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report what is out of step; change nothing")
    parser.add_argument("--refresh-kept-outputs", nargs="+", metavar="NOTEBOOK",
                        help="execute these solution notebooks and store the outputs of their kept cells")
    parser.add_argument("--force", action="store_true",
                        help="overwrite learner notebooks that hold work saved in Jupyter (outputs, answers)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = out_of_step()
            for problem in problems:
                print(problem)
            if problems:
                print("Run `python -m course_lib.machinery.make_notebooks` (or `make notebooks`) to regenerate notebooks/ "
                      "from solutions/: it stops, without writing, where a learner notebook holds saved work.")
            return 1 if problems else 0
        for name in args.refresh_kept_outputs or []:
            path = _find_solution(name)
            print(f"executing {path.relative_to(REPO_ROOT)} ...")
            refresh_kept_outputs(path)
        for path in generate(force=args.force):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    except (NotebookFormatError, SavedWorkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
