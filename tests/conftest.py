"""Shared test settings.

Threads: importing course_lib has already given torch the threads this process may use (``runtime.THREADS``:
the CPU quota, the affinity mask, or COURSE_NUM_THREADS / OMP_NUM_THREADS). The tests use at most 2 of them, so
that timings and float sums are the same from run to run and from a laptop to a CI machine; an explicit setting
in the environment is used as it is.
"""

import torch

from course_lib.runtime import THREADS

if THREADS.source == "cpu budget":
    torch.set_num_threads(min(2, THREADS.threads))
