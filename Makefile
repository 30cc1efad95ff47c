# The course's two commands:  `make lab` (set up and open the course)  and  `make test` (set up and run every test).
# Everything lives in a virtual environment inside the repo (.venv); nothing is installed system-wide.

PYTHON      ?= python3
VENV        ?= .venv
# The CPU build of torch, pinned. A GPU user installs their own torch into $(VENV) first (see README):
# the set-up keeps any torch that is already there.
TORCH_SPEC  ?= torch==2.13.0
KERNEL_NAME := deepseek-v3-course
BIN         := $(VENV)/bin
# Notebooks quick enough for `make test-quick` (names without .ipynb).
FAST_NOTEBOOKS ?= 00_headline_numbers 01_mixture_of_experts 02_load_balance 03_aux_loss_free
NBVAL_FLAGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300

.PHONY: setup setup-test browser lab test test-quick notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.course-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python (DeepSeek-V3 course)"
	touch $@

$(VENV)/.test-installed: $(VENV)/.course-installed
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

setup: $(VENV)/.course-installed

setup-test: $(VENV)/.test-installed

lab: setup
	$(BIN)/jupyter lab notebooks/

# The browser test drives Debian's chromium (never a browser that Playwright downloads). Install it when we can
# (root with apt-get, as in CI); elsewhere the test is skipped with a message that says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: the browser test will be skipped (Debian/Ubuntu: sudo apt-get install chromium)"; fi; }

test: setup-test browser
	$(BIN)/python -m pytest tests notebooks solutions $(NBVAL_FLAGS)

test-quick: setup-test
	$(BIN)/python -m pytest -m "not slow" tests $(NBVAL_FLAGS) \
		$(foreach nb,$(FAST_NOTEBOOKS),notebooks/$(nb).ipynb solutions/$(nb).ipynb)

# Regenerate the learner notebooks from solutions/ (and strip outputs). Run after editing a solution notebook.
notebooks: setup
	$(BIN)/python -m course_lib.make_notebooks

clean:
	rm -rf $(VENV) .pytest_cache
