# Every target creates the environment first if it is missing (see scripts/setup_env.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gcross-installed
DEPS := scripts/setup_env.sh requirements/common.txt requirements/ros-pypi.txt setup.py

.PHONY: env demo test test-all bench

$(STAMP): $(DEPS)
	VENV=$(VENV) bash scripts/setup_env.sh
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m gcross_ros.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
