#!/usr/bin/env bash
# Install the Debian packages that the image build and the real-cluster tests need, only when some are
# missing (a fresh Debian 12 machine, as root, no systemd). Idempotent and quick when all are there:
# one dpkg-query, no apt-get.
#
#   scripts/image/deps.sh            # what the image scripts need + the cluster's runtime packages
#
# Image build: buildah, podman, debootstrap (the stand-in base), gcc + libc6-dev (the static pause binary).
# Cluster: containerd, runc, containernetworking-plugins (CNI bridge/host-local/portmap), iptables and
# conntrack (kube-proxy).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

packages=(
  buildah podman debootstrap debian-archive-keyring ca-certificates gcc libc6-dev
  containerd runc containernetworking-plugins iptables conntrack
  util-linux tar coreutils
)

t0="$(now)"
command -v dpkg-query >/dev/null || die "deps.sh installs with apt on Debian 12; on this system install by hand: ${packages[*]}"

# One dpkg-query for all; a package it has never heard of prints nothing, so it counts as missing too.
installed=" $(dpkg-query -W -f='${db:Status-Status}:${Package} ' "${packages[@]}" 2>/dev/null || true) "
missing=()
for p in "${packages[@]}"; do
  [[ "$installed" == *" installed:$p "* ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  log "deps: all ${#packages[@]} packages present ($(since "$t0") s)"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "missing packages (${missing[*]}); run deps.sh as root to install them"
take_lock deps
export DEBIAN_FRONTEND=noninteractive
step "apt-get update" apt-get update -q
step "apt-get install ${missing[*]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
log "deps: installed ${missing[*]} ($(since "$t0") s)"
