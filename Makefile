# One entry point for set-up and tests on a fresh machine (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test setup studio bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: the local CPU wheel here, the CUDA build on a GPU machine.
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/system_deps.sh

test: setup
	$(PY) -m pytest -q

studio: $(STAMP)
	$(PY) app.py

clean:
	rm -rf $(VENV) .pytest_cache
