# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Local CPU build of torch; any newer release would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEMO_FRAMES ?= 30

.PHONY: demo test lint format install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

DEMO_DIR ?= demo-output

# The live demo: a simulated microscope writes a table1 series (with ground truth) into
# $(DEMO_DIR)/frames at a cadence while `nptrack watch`'s pipeline runs on it with the shipped
# model; a progress line per frame, then a summary and the scores against the truth.
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/nptrack demo --frames $(DEMO_FRAMES) --no-gui --out $(DEMO_DIR)

test: $(VENV)/.installed-dev
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build dist
