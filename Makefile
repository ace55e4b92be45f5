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

# Until the live `nptrack demo` lands: a simulated microscope series (table1 preset), then the
# real commands on its files: info, registration to frame 0, particle analysis with the
# shipped U-Net, and tracking scores of the ground truth file format check.
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/nptrack simulate sequence $(DEMO_DIR) --frames $(DEMO_FRAMES) --preset table1
	$(VENV)/bin/nptrack info $(DEMO_DIR)/frames/frame_0000.tif
	$(VENV)/bin/nptrack register $(DEMO_DIR)/frames --out $(DEMO_DIR)/registered
	$(VENV)/bin/nptrack analyze $(DEMO_DIR)/frames --out $(DEMO_DIR)/analysis
	@echo "demo outputs in $(DEMO_DIR)/: ground truth, registered/ (frames.csv, drift.png), analysis/ (particles.csv, overlays)"

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
