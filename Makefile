# Every target creates the environment first if it is missing (see scripts/setup_env.sh).
# ROS_DISTRO picks the ROS 2 wheels (requirements/ros-<distro>.txt): kilted when unset, or jazzy; each
# distribution gets its own venv (.venv for Kilted, .venv-<distro> otherwise; VENV=... overrides it).
DISTRO := $(or $(ROS_DISTRO),kilted)
VENV ?= $(if $(filter kilted,$(DISTRO)),.venv,.venv-$(DISTRO))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gcross-installed
DEPS := scripts/setup_env.sh requirements/common.txt $(wildcard requirements/ros-$(DISTRO).txt) setup.py

.PHONY: env demo test test-ros test-all bench

$(STAMP): $(DEPS)
	VENV=$(VENV) bash scripts/setup_env.sh
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m gcross_ros.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The node, message, bag and CLI tests only (what CI runs on the second distribution).
test-ros: $(STAMP)
	$(PY) -m pytest tests/ros tests/cli -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest

# Speed and memory figures, each benchmark with its defaults (the experiments in experiments/ need data).
bench: $(STAMP)
	for b in $(filter-out __init__,$(basename $(notdir $(wildcard benchmarks/*.py)))); do \
		echo "== benchmarks.$$b"; $(PY) -m benchmarks.$$b || exit 1; done
