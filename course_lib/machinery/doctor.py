"""Check that this machine can run the course: ``python -m course_lib.machinery.doctor``.

Prints one line per check, OK or a fix, and exits with 1 when something needs fixing. The first cell of
notebook 00 runs it too.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: ok, what was found, and what to do when not ok.

    A finding that is not ok but ``advisory`` is printed as NOTE: worth knowing, nothing is broken.
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    advisory: bool = False

    @property
    def status(self) -> str:
        return "OK" if self.ok else ("NOTE" if self.advisory else "FIX")

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<10} {self.detail}" + ("" if self.ok else f"\n     -> {self.fix}")


def check_python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Finding("python", ok, f"{version} at {sys.executable}",
                   f"the course needs Python {'.'.join(map(str, MIN_PYTHON))} or newer: install it, then `make clean && make lab`")


CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def gpu_hardware() -> bool:
    """Whether this machine has an NVIDIA GPU and driver, whatever torch makes of it."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return shutil.which("nvidia-smi") is not None or (gpus.is_dir() and any(gpus.iterdir()))


def check_torch() -> Finding:
    try:
        import torch
    except ImportError:
        return Finding("torch", False, "not installed", "run `make lab` (it installs the CPU build of torch into .venv)")
    if torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}"
    elif torch.version.cuda:
        release = torch.__version__.split("+")[0]
        if gpu_hardware():
            return Finding("torch", False, f"{torch.__version__} is built for CUDA {torch.version.cuda}, but it "
                                           f"cannot use this machine's GPU",
                           "update the NVIDIA driver (`nvidia-smi` shows the CUDA version it supports), or install "
                           "the torch build for that CUDA version (pytorch.org, 'Get started')")
        return Finding("torch", False, f"{torch.__version__} is a CUDA {torch.version.cuda} build (about 3 GB with its "
                                       f"NVIDIA libraries) on a machine with no GPU",
                       f"take the CPU build (about 200 MB): `make clean && make lab`, or in this environment "
                       f"`{sys.executable} -m pip install --force-reinstall --no-deps --index-url {CPU_TORCH_INDEX} "
                       f"torch=={release}` (then `pip uninstall` the nvidia-* packages it leaves behind)")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        build = "MPS (Apple GPU)"
    else:
        build = "CPU build"
    return Finding("torch", True, f"{torch.__version__} ({build})")


def check_threads() -> Finding:
    import torch

    from course_lib.core.runtime import THREADS, THREADS_VARIABLE

    now = torch.get_num_threads()
    detail = f"torch uses {now} intra-op thread(s): {THREADS.reason}"
    if now != THREADS.threads:
        detail += f"; the course chose {THREADS.threads}, and something has changed it since"
    if THREADS.warning:
        return Finding("threads", False, f"{detail}. {THREADS.warning}",
                       f"set {THREADS_VARIABLE} (or OMP_NUM_THREADS) to a positive integer, or unset it")
    return Finding("threads", True, f"{detail} (override: {THREADS_VARIABLE}=N)")


def check_device() -> Finding:
    try:
        from course_lib.core.runtime import get_device

        device = get_device("auto")
    except Exception as error:  # report, never crash: this is the tool people run when things are broken
        return Finding("device", False, f"get_device('auto') failed: {error}", "reinstall torch: `make clean && make lab`")
    return Finding("device", True, f'"auto" picks {device}')


def check_kernel(kernel_name: str | None = None) -> Finding:
    from course_lib.machinery.make_notebooks import KERNEL_NAME

    kernel_name = kernel_name or KERNEL_NAME
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except ImportError:
        return Finding("kernel", False, "jupyter_client is not installed", "run `make lab`")
    except NoSuchKernel:
        return Finding("kernel", False, f"no Jupyter kernel named {kernel_name!r}",
                       f"python -m ipykernel install --sys-prefix --name {kernel_name} "
                       f"--display-name 'Python (DeepSeek-V3 course)'")
    python = spec.argv[0] if spec.argv else "?"
    return Finding("kernel", True, f"{kernel_name!r} runs {python}")


def check_widgets() -> Finding:
    try:
        import ipywidgets

        widgets_version = ipywidgets.__version__
        lab_widgets = importlib.metadata.version("jupyterlab_widgets")
        ipywidgets.IntSlider()  # builds a widget model: fails when the comm machinery is broken
    except (ImportError, importlib.metadata.PackageNotFoundError) as error:
        return Finding("widgets", False, f"missing: {error}", "python -m pip install 'ipywidgets>=8' (then restart JupyterLab)")
    except Exception as error:
        return Finding("widgets", False, f"ipywidgets cannot build a widget: {error}", "python -m pip install -U ipywidgets")
    if int(widgets_version.split(".")[0]) < 8:
        return Finding("widgets", False, f"ipywidgets {widgets_version} is too old", "python -m pip install -U 'ipywidgets>=8'")
    return Finding("widgets", True, f"ipywidgets {widgets_version}, jupyterlab_widgets {lab_widgets}")


def check_notebooks() -> Finding:
    from course_lib.machinery.make_notebooks import REPO_ROOT, out_of_step, solution_paths

    if not solution_paths(REPO_ROOT):
        return Finding("notebooks", True, "no solutions/ here (installed package): nothing to compare")
    problems = out_of_step(REPO_ROOT)
    if problems:
        return Finding("notebooks", False, f"{len(problems)} out of step with solutions/, e.g. {problems[0]}",
                       "your own answers in notebooks/ never cause this (the check reads git's committed copy). "
                       "Instructors: `make notebooks` regenerates notebooks/ from solutions/; it stops, writing "
                       "nothing, where a notebook holds work saved in Jupyter", advisory=True)
    return Finding("notebooks", True, f"notebooks/ is in step with solutions/ ({len(solution_paths(REPO_ROOT))} notebooks)")


CHECKS: tuple[Callable[[], Finding], ...] = (check_python, check_torch, check_threads, check_device, check_kernel,
                                              check_widgets, check_notebooks)


def run_checks() -> list[Finding]:
    """Run every check; a check that crashes becomes a finding that says so."""
    findings = []
    for check in CHECKS:
        try:
            findings.append(check())
        except Exception as error:
            findings.append(Finding(check.__name__.removeprefix("check_"), False, f"the check itself failed: {error!r}",
                                    "please report this, with the line above"))
    return findings


def report() -> None:
    """Print every check's line and a verdict (a notebook's first cell calls it: it returns nothing to echo)."""
    print_findings(run_checks())


def print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        print(finding.line())
    broken = [f for f in findings if f.status == "FIX"]
    print("All good: the course is ready." if not broken else f"{len(broken)} thing(s) to fix: see the lines marked FIX.")


def main() -> int:
    """``python -m course_lib.machinery.doctor``: exit status 0 when nothing needs fixing (NOTEs are fine), else 1."""
    findings = run_checks()
    print_findings(findings)
    return 1 if any(f.status == "FIX" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
