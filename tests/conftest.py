"""Shared test settings: torch's threads, and the device of the device tests (``--device``, ``make test-gpu``).

Threads: importing course_lib has already given torch the threads this process may use (``runtime.THREADS``:
the CPU quota, the affinity mask, or COURSE_NUM_THREADS / OMP_NUM_THREADS). ``make test`` sets
COURSE_NUM_THREADS=1 (``TEST_THREADS`` in the Makefile: two spinning threads per process make a shared machine
several times slower); run by hand without it, the tests use at most 2, so that timings and float sums are the
same from run to run and from a laptop to a CI machine. An explicit setting in the environment is used as it is.

Device: a test that takes the ``device`` fixture runs its tensors on that device and compares them with a CPU
reference. Without ``--device`` every test runs, the device tests on the CPU. ``pytest tests --device cuda``
(``make test-gpu``) runs only the device tests, on CUDA, and stops at once with the reason when torch sees no
such device; ``--dtype`` is the dtype given to the notebooks that have a ``dtype`` parameter
(tests/test_notebooks_on_device.py).

Shared fixtures: ``tiny_model``, a seeded TinyDeepSeek of ``tiny_config()`` (tests/tiny_models.py; test files import
``tiny_config`` and ``tiny_model`` from there for other sizes, or where a fixture cannot reach), and ``corpus``,
``data.python_docs()`` built once per session: read it, never change it (the session's end checks that no test did).
"""

from collections.abc import Iterator

import pytest
import torch

from course_lib.core.runtime import THREADS, get_device
import tiny_models
from course_lib.model.tiny import TinyDeepSeek
from course_lib.training import data

if THREADS.source == "cpu budget":
    torch.set_num_threads(min(2, THREADS.threads))

NOTEBOOK_DTYPES = ("float32", "bfloat16")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=None,
                     help="run only the tests that take a `device`, on this torch device (cuda, cuda:1, mps, cpu)")
    parser.addoption("--dtype", default="float32", choices=NOTEBOOK_DTYPES,
                     help="the `dtype` parameter of the notebooks that have one, in the device notebook tests")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--device", default=None)
    if name is None:
        return
    try:
        get_device(name)
    except ValueError as error:
        raise pytest.UsageError(
            f"--device {name}: {error}. `make test-gpu` needs an NVIDIA GPU and a CUDA build of torch in .venv; on "
            f"a GPU machine `make clean && make test-gpu TORCH_INDEX=` installs PyPI's (CUDA) build") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--device", default=None) is None:
        return
    selected = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    deselected = [item for item in items if "device" not in getattr(item, "fixturenames", ())]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of the device tests: --device, or the CPU."""
    return get_device(request.config.getoption("--device") or "cpu")


@pytest.fixture
def tiny_model() -> TinyDeepSeek:
    """``tiny_models.tiny_model()``: a TinyDeepSeek of ``tiny_config()``, seeded."""
    return tiny_models.tiny_model()


@pytest.fixture(scope="session")
def corpus() -> Iterator[data.Corpus]:
    """``data.python_docs()``, built once per session; the tests share it, so none may change it."""
    corpus = data.python_docs()
    tensors = {name: value.clone() for name, value in vars(corpus).items() if isinstance(value, torch.Tensor)}
    yield corpus
    changed = [name for name, value in tensors.items() if not torch.equal(getattr(corpus, name), value)]
    assert not changed, f"a test changed the shared corpus (tests/conftest.py): {changed}"
