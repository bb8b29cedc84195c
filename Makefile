# The two commands a new user needs: `make demo` (the main job) and `make test` (installs everything, runs the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint unit testenv bench bench-quick bench-adaptive soak clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m agent.demo

lint: install
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/mypy agent

unit: install
	$(VENV)/bin/pytest tests/unit -q

testenv:
	scripts/testenv/build.sh

# The suite runs inside a private network namespace whose loopback also carries 192.168.205.0/24 (the
# stand-in for the peered VPC): the kube tests need instance IPs that Kubernetes accepts. See scripts/vpc-netns.
test: install lint testenv
	scripts/vpc-netns $(VENV)/bin/pytest tests -q

# Adaptive load balancing, side by side with Envoy's policies: about 10 minutes on its own, so it is kept
# out of `make bench` (bounded to 15 minutes); results go to bench/results/adaptive.json and docs/img/.
bench-adaptive: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.adaptive_bench

soak: install
	$(PY) -m tests.soak.run_soak --seconds 600

bench: install testenv
	scripts/bench/build-tools.sh
	$(PY) -m bench.run

bench-quick: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.run --quick

clean:
	rm -rf run .pytest_cache .mypy_cache .ruff_cache
