#!/usr/bin/env bash
# The end-to-end tests (tests/e2e) against a kind cluster, for machines with a Docker engine.
#
#   scripts/kind-e2e.sh            # creates the kind cluster "modelarts-e2e", runs the tests, deletes it
#   KEEP=1 scripts/kind-e2e.sh     # keeps the cluster afterwards
#
# The same tests run here on the project's own single-node cluster (`make e2e`); this script only
# swaps the cluster: it builds the images with `docker build`, loads them into kind, and points the tests
# at kind's kubeconfig (E2E_KUBECONFIG), so they start nothing of their own.
# It cannot run in the project's development workspace: no Docker engine runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${KIND_CLUSTER:-modelarts-e2e}"
image="localhost/modelarts-agent:dev"
emulator_image="localhost/modelarts-emulator:dev"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "$0: needs $tool on PATH" >&2; exit 2; }
done
docker build -t "$image" .
docker build --target emulator -t "$emulator_image" .
kind get clusters | grep -qx "$name" || kind create cluster --name "$name" --wait 120s
[[ "${KEEP:-0}" == 1 ]] || trap 'kind delete cluster --name "$name"' EXIT
kind load docker-image --name "$name" "$image" "$emulator_image"
kubeconfig="$(mktemp)"
kind get kubeconfig --name "$name" >"$kubeconfig"
make install
E2E_KUBECONFIG="$kubeconfig" .venv/bin/pytest tests/e2e -q -m e2e "$@"
