"""Every benchmark script runs (``--quick``: a tiny size, 1 thread, 2 rounds) and prints its summary lines, so the
scripts never rot. The figures themselves are measured by running the scripts (see README, Speed)."""

import runpy
import sys

import pytest

from course_lib.machinery.make_notebooks import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
FIGURES = {
    "bench_generate.py": ["FIGURE generate_cache threads=1:"],
    "bench_moe_vs_dense.py": ["FIGURE moe_vs_dense threads=1:"],
    "bench_moe_vs_hf.py": ["FIGURE moe_vs_hf_grouped_mm threads=1:"],
    "bench_train.py": ["FIGURE train_moe_vs_dense threads=1:"],
    "bench_nb05_run.py": ["FIGURE nb05_default_run threads=1:", "sample: "],
    "profile_train_step.py": ["dispatch (routed experts)", "optimizer (AdamW)"],
}


def test_every_script_is_tested():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name.startswith(("bench_", "profile_"))) == sorted(FIGURES)


SLOW = {"bench_moe_vs_hf.py", "bench_nb05_run.py", "profile_train_step.py"}  # several seconds each


@pytest.mark.parametrize("script", [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW else []) for s in sorted(FIGURES)])
def test_script_runs_quick(script, monkeypatch, capsys):
    if script == "bench_moe_vs_hf.py":
        pytest.importorskip("transformers")
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--quick"])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers (timing, moe_layer) by name
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    out = capsys.readouterr().out
    for expected in FIGURES[script]:
        assert expected in out, out[-3000:]
