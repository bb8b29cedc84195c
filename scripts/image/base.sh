#!/usr/bin/env bash
# The local stand-in for the Dockerfile's base image, python:3.11-slim-bookworm, since none can be pulled
# here: a Debian 12 minbase root filesystem with Debian's Python 3.11 (python3, venv, `python`, CA
# certificates), made by debootstrap from the Debian mirror this machine's apt sources name, then
# imported into podman's storage as docker.io/library/python:3.11-slim-bookworm.
#
# Differences from the official image: Python 3.11.x lives in /usr/bin (Debian's build), not /usr/local.
# The Dockerfile only needs `python -m venv` and useradd/groupadd, which both provide.
#
# Cached: a stamp holds a hash of the inputs (this script, which is the recipe, the suite, the packages, the mirror) and the
# image ID; when both match, the script exits at once.
#
# Environment:
#   MODELARTS_AGENT_CACHE  cache root (default: <repo>/.cache); the stamp is in <cache>/images/
#   DEBIAN_MIRROR          the mirror to debootstrap from (default: read from /etc/apt/sources.list*)
#   BASE_IMAGE_FORCE=1     rebuild even when the stamp matches
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

base_image=docker.io/library/python:3.11-slim-bookworm
suite=bookworm
include=python3,python3-venv,python-is-python3,ca-certificates
stamp_file="$images_cache/base.stamp"

# The first deb URI for $suite in the apt sources (one-line .list and deb822 .sources formats).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (n = 1; n <= NF; n++) {
          line = $n
          if (line ~ /^#/) continue
          key = tolower(line); sub(/:.*/, "", key)
          val = line; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = " " val " "
          else if (key == "uris") uris = val
          else if (key == "suites") suites = " " val " "
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled != "no" && types ~ / deb / && suites ~ (" " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
      }' "$f"
  done
}

require_root
"$image_dir/deps.sh"
mirror="${DEBIAN_MIRROR:-$(debian_mirror | head -n 1)}"
[[ -n "$mirror" ]] || die "no 'deb' source for $suite in /etc/apt/sources.list or /etc/apt/sources.list.d/ (set DEBIAN_MIRROR)"
arch="$(dpkg --print-architecture)"
inputs="$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
stamp_want="inputs=$inputs mirror=$mirror suite=$suite arch=$arch include=$include"

up_to_date() {
  [[ -f "$stamp_file" ]] || return 1
  local want_id
  want_id="$(sed -n 's/^id=//p' "$stamp_file")"
  [[ "$(sed -n '1p' "$stamp_file")" == "$stamp_want" && -n "$want_id" ]] || return 1
  [[ "$(podman image inspect --format '{{.Id}}' "$base_image" 2>/dev/null)" == "$want_id" ]]
}

t_all="$(now)"
if [[ "${BASE_IMAGE_FORCE:-0}" != 1 ]] && up_to_date; then
  log "base: cache hit, $base_image is up to date ($(since "$t_all") s)"
  exit 0
fi
take_lock base
if [[ "${BASE_IMAGE_FORCE:-0}" != 1 ]] && up_to_date; then
  log "base: cache hit, $base_image built by a concurrent run ($(since "$t_all") s)"
  exit 0
fi

rootfs="$images_cache/base-rootfs"
cleanup() {
  [[ -d "$rootfs" ]] || return 0
  # An interrupted debootstrap can leave /proc or /sys mounted inside: unmount those first (deepest first).
  awk -v root="$rootfs/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
  rm -rf --one-file-system "$rootfs"
}
cleanup_hooks+=(cleanup)
cleanup
log "base: building $base_image from $suite ($arch) via the mirror in the apt sources"
step "debootstrap $suite" debootstrap --variant=minbase --arch="$arch" --include="$include" "$suite" "$rootfs" "$mirror"
# What the official slim image leaves out too: downloaded packages, apt lists; and the host's own files.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
rm -f "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
import_rootfs() {
  tar --numeric-owner --xattrs -C "$rootfs" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $suite + $include" - "$base_image"
}
step "podman import $base_image" import_rootfs
id="$(podman image inspect --format '{{.Id}}' "$base_image")"
printf '%s\nid=%s\n' "$stamp_want" "$id" >"$stamp_file"
size="$(podman image inspect --format '{{.Size}}' "$base_image")"
log "base: $base_image ($(human_size "$size")) built in $(since "$t_all") s"
