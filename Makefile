# The two set-up commands: `make train` (the main job) and `make test`. Both create the virtual
# environment if it is missing and install the project into it first.
# TORCH picks the torch requirement: the default takes PyPI's normal wheel; CI and CPU-only machines
# can pin a build, e.g. `make test TORCH=torch==2.13.0`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
# Test processes (pytest-xdist): logical is one per CPU; TEST_JOBS=0 runs the suite in one process.
TEST_JOBS ?= logical
BIN := $(VENV)/bin
# Two stamps: the package with torch (what train and sample need), and the same with the [dev] extras
# (pytest, ruff, and the launchers, search and trackers the tests cover), which test and lint need.
INSTALLED := $(VENV)/.installed
INSTALLED_DEV := $(VENV)/.installed-dev

.PHONY: install install-dev train test lint clean

# $(1): what to install with torch: "." or ".[dev]"
define install_into_venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e "$(1)"
endef

$(INSTALLED): pyproject.toml
	$(call install_into_venv,.)
	touch $@

$(INSTALLED_DEV): pyproject.toml
	$(call install_into_venv,.[dev])
	touch $(INSTALLED) $@

install: $(INSTALLED)

install-dev: $(INSTALLED_DEV)

train: install  ## the CPU speed-run (a 0.24M GPT) on Tiny Shakespeare, then print a sample
	$(BIN)/python train.py experiment=speedrun
	$(BIN)/python sample.py num_tokens=300

test: lint  ## lint, then the whole test suite
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist worksteal

lint: install-dev  ## ruff's checks (the code keeps its own layout, not ruff format's)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs/runs outputs/multirun
