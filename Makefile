# Two commands do everything on a fresh machine:
#   make demo   — set up, then segment the bundled sample by text prompt with the bundled model
#   make test   — set up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast demo-model clean

setup: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in the same command as everything else, so nothing can pull a CUDA build.
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	bash scripts/install_data.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/medals demo

test: setup
	$(PY) -m pytest -q Testing/Python

test-fast: setup
	$(PY) -m pytest -q -m "not slow" Testing/Python

# Retrain the shipped demo model from the packaged data (about 2¼ h on 2 CPU cores; see its model card).
demo-model: setup
	$(PY) scripts/prepare_demo_data.py build/demo-data --heldout build/demo-heldout
	$(VENV)/bin/medals train configs/demo.json
	$(VENV)/bin/medals train configs/demo-refine.json
	$(PY) scripts/evaluate_heldout.py build/demo-refine/model build/demo-heldout --out build/demo-refine/heldout.json

clean:
	rm -rf $(VENV)
