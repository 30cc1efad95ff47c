# The course's two commands:  `make lab` (set up and open the course)  and  `make test` (set up and run every test).
# Everything lives in a virtual environment inside the repo (.venv); nothing is installed system-wide.

PYTHON      ?= python3
VENV        ?= .venv
# torch, pinned, and where it comes from: PyTorch's CPU index (about 200 MB; on Linux, PyPI's default is the CUDA
# build, about 3 GB). tools/install_torch.py asks that index for torch alone, with a short timeout, and says what
# to do when it cannot be reached. TORCH_INDEX= (empty) takes pip's usual index instead (the CUDA build on Linux:
# for a GPU machine). The set-up keeps any torch that is already in $(VENV) (a GPU user's own, see README).
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
KERNEL_NAME := deepseek-v3-course
BIN         := $(VENV)/bin
# Notebooks quick enough for `make test-quick` (names without .ipynb).
FAST_NOTEBOOKS ?= 00_headline_numbers 01_mixture_of_experts 02_load_balance 03_aux_loss_free
NBVAL_FLAGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300
# JupyterLab refuses to start as root (a Docker container, a workshop VM) unless it is told it may.
LAB_FLAGS   := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
# The lab's terminals work in the course environment, as the notebooks' commands expect (`torchrun ...`): the server
# runs with .venv/bin first on PATH, and its terminals start the user's shell through tools/jupyter/terminal.sh, which
# activates .venv after the shell's own start-up files (a ~/.bashrc with pyenv or conda init puts another python
# first) and never starts a login shell (its /etc/profile would put the system's PATH back; JupyterLab starts one
# when it has no terminal of its own). The
# launcher offers the course kernel alone, not ipykernel's second "Python 3" one: the set-up copies
# tools/jupyter/jupyter_server_config.json into the environment's Jupyter configuration (binder/postBuild too).
LAB_ENV     := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" COURSE_VENV="$(abspath $(VENV))"
LAB_CONFIG  := --ServerApp.terminado_settings=shell_command="$(abspath tools/jupyter/terminal.sh)"
# More JupyterLab options, for example `make lab LAB_ARGS="--port 8890 --no-browser"`.
LAB_ARGS    ?=

.PHONY: setup setup-test browser lab test test-quick test-gpu gpu-check notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.course-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python tools/install_torch.py --spec "$(TORCH_SPEC)" --index "$(TORCH_INDEX)"
	$(BIN)/python -m pip install -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python (DeepSeek-V3 course)"
	mkdir -p $(VENV)/etc/jupyter
	cp tools/jupyter/jupyter_server_config.json $(VENV)/etc/jupyter/
	touch $@

$(VENV)/.test-installed: $(VENV)/.course-installed
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# Where papermill runs write their notebooks (README); ignored by git.
out:
	mkdir -p $@

setup: $(VENV)/.course-installed | out

setup-test: $(VENV)/.test-installed | out

lab: setup
	$(LAB_ENV) $(BIN)/jupyter lab notebooks/ $(LAB_FLAGS) $(LAB_CONFIG) $(LAB_ARGS)

# The browser test drives Debian's chromium (never a browser that Playwright downloads). Install it when we can
# (root with apt-get, as in CI); elsewhere the test is skipped with a message that says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: the browser test will be skipped (Debian/Ubuntu: sudo apt-get install chromium)"; fi; }

# The tests' torch threads (COURSE_NUM_THREADS, inherited by every notebook kernel the tests start): 1, so that a
# machine shared with other work still passes. Two torch threads spin while they wait for a CPU another process
# holds: on 2 cores, with a second job running, 30 training steps took 15-20 s at 2 threads against 5.5 s at 1
# (2.4 s and 3.6 s on a quiet machine). `make test TEST_THREADS=2` tests with 2.
TEST_THREADS ?= 1

test: setup-test browser
	COURSE_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest tests notebooks solutions $(NBVAL_FLAGS) --durations=30

test-quick: setup-test
	COURSE_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -m "not slow" tests $(NBVAL_FLAGS) \
		$(foreach nb,$(FAST_NOTEBOOKS),notebooks/$(nb).ipynb solutions/$(nb).ipynb)

# On an NVIDIA GPU (the self-hosted runner of .github/workflows/gpu.yml): every notebook on CUDA, in bfloat16 where
# it has a `dtype` parameter, its device-independent kept outputs compared; and the unit tests that take a
# `device`, on CUDA tensors (tests/conftest.py, tests/test_device.py, tests/test_notebooks_on_device.py).
# Needs a CUDA build of torch in $(VENV): in a fresh clone, `make test-gpu TORCH_INDEX=` installs PyPI's.
test-gpu: gpu-check
	$(MAKE) setup-test
	$(BIN)/python -m pytest tests --device cuda --dtype bfloat16 -p no:cacheprovider

# Fails at once, before any set-up (even under make -j), where there is no GPU to test on.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make test-gpu needs an NVIDIA GPU, and nvidia-smi finds none here." \
	  "It runs on the GPU runner (.github/workflows/gpu.yml); on this machine, run make test."; exit 2; }

# Regenerate the learner notebooks from solutions/ (and strip outputs). Run after editing a solution notebook.
notebooks: setup
	$(BIN)/python -m course_lib.machinery.make_notebooks

clean:
	rm -rf $(VENV) .pytest_cache
