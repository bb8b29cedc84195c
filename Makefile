# The two commands a new user needs: `make demo` (the main job) and `make test` (installs everything, runs the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test prepare install lock lint unit testenv image e2e bench bench-quick bench-dataplane bench-adaptive soak clean

# Everything comes from requirements/dev.lock (exact versions, every file's hash; setuptools and wheel
# included, so the local packages build without fetching anything unhashed), then the two local packages,
# editable and without dependencies. A changed lock or pyproject re-installs; otherwise this is instant.
$(STAMP): pyproject.toml emulator/pyproject.toml requirements/dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	@$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . -e ./emulator
	@$(PY) scripts/proto_stubs.py
	@touch $(STAMP)

install: $(STAMP)

# The lock files, from pyproject.toml and emulator/pyproject.toml. uv rather than pip-tools: pip-compile
# drives pip's internals and breaks when pip moves (pip 26 here), while uv is one self-contained resolver
# (a dev dependency from the package index) that writes pip's own requirements format with the hash of
# every file of each pinned version, so plain `pip install --require-hashes` installs them, in the image
# too. Existing pins are kept unless LOCK_UPGRADE=--upgrade. runtime.lock is what the product image
# installs (the product + [envoy]); emulator.lock what the emulator adds (its image); dev.lock is everything
# `make install` needs; build.lock the build backend for the image's wheels. The last three are
# constrained by runtime.lock, so a package has one version everywhere.
# runtime.lock's packages, left out of emulator.lock (the emulator image installs it on top of runtime.lock).
RUNTIME_PINS = $$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' requirements/runtime.lock)
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--custom-compile-command "make lock" $(LOCK_UPGRADE)
lock: install
	$(UV_COMPILE) --extra envoy -o requirements/runtime.lock pyproject.toml
	$(UV_COMPILE) --extra envoy -c requirements/runtime.lock $(RUNTIME_PINS) -o requirements/emulator.lock pyproject.toml emulator/pyproject.toml
	$(UV_COMPILE) --extra dev --extra envoy -c requirements/runtime.lock -o requirements/dev.lock pyproject.toml emulator/pyproject.toml
	$(UV_COMPILE) -c requirements/dev.lock -o requirements/build.lock requirements/build.in

demo: install
	$(PY) -m demo

lint: install
	$(VENV)/bin/ruff check agent emulator demo tests bench
	$(PY) scripts/proto_stubs.py
	$(VENV)/bin/mypy agent emulator/modelarts_emulator demo bench
	$(VENV)/bin/lint-imports --no-cache

unit: install
	$(VENV)/bin/pytest tests/unit -q

testenv:
	scripts/testenv/build.sh
	scripts/promtool/build.sh

# The project's image (buildah on a stand-in base made from Debian packages) and the kubelet's pause
# image, as archives for containerd; cached by a hash of their inputs. Installs the apt packages it needs.
image:
	scripts/image/all.sh

# End-to-end tests on a real single-node cluster (kubelet, containerd, kube-proxy, CNI, CoreDNS) with
# the built image: they need real root and make their own private network namespace, so they run
# outside scripts/vpc-netns. E2E_KUBECONFIG=<file> runs them against another cluster instead.
E2E := $(VENV)/bin/pytest tests/e2e tests/packaging -q -m e2e

e2e: install testenv image
	$(E2E)

# The suite runs inside a private network namespace whose loopback also carries 192.168.205.0/24 (the
# stand-in for the peered VPC): the kube tests need instance IPs that Kubernetes accepts. See scripts/vpc-netns.
test: prepare
	$(MAKE) --no-print-directory lint
	scripts/vpc-netns $(VENV)/bin/pytest tests -q -m "not e2e"
	$(E2E)

# The set-up steps do not need each other, so they run side by side: pip, the Go builds (CPU-bound) and
# apt + the image build (network- and disk-bound). On a fresh machine that saves several minutes.
prepare:
	$(MAKE) --no-print-directory -j3 --output-sync=line install testenv image

# Adaptive load balancing, side by side with Envoy's policies: about 10 minutes on its own, so it is kept
# out of `make bench` (bounded to 15 minutes); results go to bench/results/adaptive.json and docs/img/.
bench-adaptive: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.adaptive_bench

soak: install
	$(PY) -m tests.soak.run_soak --seconds 600

# Scenario 1 (the data plane vs a hand-written minimal Envoy, its cost table, 1 and 2 workers) is a step of
# its own, about 7 minutes: bench/results/dataplane.json; bench.run's page renders it from there.
bench-dataplane: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.dataplane_bench

# Cost per pod (the sidecar with 1 and 10 Services) and the controller at scale (1,000 ModelArtsServices over 50
# Secrets), each on its own real apiserver inside the private namespace: about 12 minutes, each part bounded to 8.
# bench/results/sidecar-cost.json and controller-scale.json, and their section of docs/benchmarks.md.
.PHONY: bench-pod
bench-pod: install testenv
	scripts/vpc-netns $(PY) -m bench.pod_bench

# The agent's xDS server beside go-control-plane (LinearCache, SnapshotCache; scripts/bench/xds-reference), SotW
# and delta, 100/1,000 streams x 10/1,000/10,000 endpoints: about 11 minutes, bounded; bench/results/xds-compare.json,
# its section of docs/benchmarks.md and docs/img/xds-compare-*.png. Also a step of `make bench`.
.PHONY: bench-xds
bench-xds: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.xds_compare
	$(PY) -m bench.xds_compare_report

bench: install testenv
	scripts/bench/build-tools.sh
	$(PY) -m bench.dataplane_bench
	$(PY) -m bench.run
	$(PY) -m bench.xds_compare
	$(PY) -m bench.xds_compare_report
	scripts/vpc-netns $(PY) -m bench.pod_bench

bench-quick: install
	scripts/bench/build-tools.sh
	$(PY) -m bench.dataplane_bench --quick
	$(PY) -m bench.run --quick
	$(PY) -m bench.xds_compare --quick --output .cache/bench/xds-compare-quick.json

clean:
	rm -rf run .pytest_cache .mypy_cache .ruff_cache
