"""Install torch into the running Python (the course's .venv) from the PyTorch CPU index; `make setup` runs it.

    python tools/install_torch.py [--spec torch==2.13.0] [--index URL] [--report FILE]

Why: on Linux, `pip install torch` takes PyPI's default build, the CUDA one (a 500 MB wheel and about 2.5 GB of
NVIDIA libraries). The CPU build (about 200 MB) comes from PyTorch's own index, so that index is pip's
``--index-url`` for torch. Only torch itself is asked from it (``--no-deps``): torch's dependencies come right
after, with the course's own (``pip install -e .``), from pip's usual index (PyPI, or the mirror your pip is
configured to use). pip's find-links (``PIP_FIND_LINKS``, pip.conf) stay in effect, so a wheel on local disk is
still found.

Never a hang: pip gets a short network timeout and one retry, so an index that cannot be reached costs seconds,
not minutes. Then, if no other source had the build, this script says why and what to do; off Linux (where
PyPI's torch has no CUDA in it) it falls back to pip's usual index. Never the CUDA build by surprise: on Linux,
when another source in pip's configuration supplied a torch that is not the +cpu build, it stops and says so
(before the NVIDIA libraries that such a torch requires are downloaded).

``--index ''`` uses pip's usual index (on Linux x86-64 that is the CUDA build: for a GPU machine).
``--report FILE`` resolves without installing (``pip install --dry-run --ignore-installed --report FILE``):
the test of the set-up reads which build would be installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import subprocess
import sys
import urllib.error
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_SPEC = "torch==2.13.0"
TIMEOUT_S = 10  # pip's network timeout per attempt (default 15 s, and a pip.conf may raise it); a silent index
RETRIES = 1  # costs 2 x 10 s. pip's default is 5 retries with back-off: minutes before it gives up on a dead index
PROBE_TIMEOUT_S = 5  # the check that tells "cannot be reached" from "has no such build", after pip failed


def pip_command(spec: str, index: str, report: str | None = None) -> list[str]:
    """The pip command that installs (or, with ``report``, only resolves) ``spec`` from ``index``."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--timeout", str(TIMEOUT_S),
               "--retries", str(RETRIES)]
    if index:
        command += ["--index-url", index]
    if report:
        command += ["--dry-run", "--ignore-installed", "--quiet", "--report", report]
    return command + [spec]


def unreachable(index: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``index`` cannot be reached (a short reason), or None when it answers."""
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/", timeout=timeout):
            return None
    except urllib.error.HTTPError as error:  # it answered: reachable, whatever the status
        return None if error.code < 500 else f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return str(getattr(error, "reason", error))


def resolved_version(report: str | None) -> str:
    """The torch version pip installed (or, with a report, would install)."""
    if report:
        return next(i["metadata"]["version"] for i in json.loads(open(report).read())["install"]
                    if i["metadata"]["name"].lower() == "torch")
    return importlib.metadata.version("torch")


def not_the_cpu_build(index: str, version: str) -> str | None:
    """Why ``version`` is not what a CPU index should give on Linux (there its builds are labelled +cpu)."""
    if sys.platform != "linux" or not index.rstrip("/").endswith("/cpu") or version.endswith("+cpu"):
        return None
    return (f"pip took torch {version}, not the CPU build of {index}: another source in your pip configuration "
            f"(an extra-index-url or find-links: `pip config list`) supplied it. On Linux that is the CUDA build, "
            f"and its NVIDIA libraries (about 3 GB) would follow. Remove that source, or install the torch you want "
            f"into .venv first (the set-up keeps it), then run make again.")


def advice(spec: str, index: str, reason: str | None) -> str:
    """What went wrong and the ways forward, for the learner who ran `make lab`."""
    where = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    if reason:
        head = f"{spec} could not be installed: the PyTorch CPU index {index} cannot be reached ({reason})."
    else:
        head = (f"{spec} could not be installed from {index}: it has no build of it for this machine ({where}), "
                f"or pip failed for the reason it printed above.")
    return "\n".join([
        head, "Ways forward:",
        "  - a mirror of that index:            make lab TORCH_INDEX=<url of the mirror>",
        "  - PyPI's default build instead:      make lab TORCH_INDEX=     (on Linux the CUDA build: about 3 GB)",
        "  - your own torch, installed first:   .venv/bin/python -m pip install <a torch wheel>, then make lab",
        "    (the set-up keeps a torch that is already in .venv)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=DEFAULT_SPEC, help=f"the torch requirement (default {DEFAULT_SPEC})")
    parser.add_argument("--index", default=CPU_INDEX, help=f"where torch comes from (default {CPU_INDEX}; "
                                                           f"'' for pip's usual index)")
    parser.add_argument("--report", help="resolve only, and write pip's JSON installation report to this file")
    args = parser.parse_args(argv)
    if subprocess.run(pip_command(args.spec, args.index, args.report)).returncode == 0:
        problem = not_the_cpu_build(args.index, resolved_version(args.report))
        if problem:
            print("\n" + problem, file=sys.stderr)
            return 1
        return 0
    if not args.index:
        print(f"\npip could not install {args.spec} from its usual index: see its message above.", file=sys.stderr)
        return 1
    reason = unreachable(args.index)
    if reason and sys.platform != "linux":
        print(f"\n{args.index} cannot be reached ({reason}); off Linux PyPI's torch is a CPU build too, "
              f"so it is taken from pip's usual index.", file=sys.stderr)
        return subprocess.run(pip_command(args.spec, "", args.report)).returncode
    print("\n" + advice(args.spec, args.index, reason), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
