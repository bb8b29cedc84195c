#!/usr/bin/env bash
# The kubelet's pod sandbox ("pause") image, since none can be pulled here: a static PID 1 (pause.c)
# committed FROM scratch and saved as an OCI archive for `ctr -n k8s.io images import`:
#
#   scripts/image/pause.sh  -> ${MODELARTS_AGENT_CACHE:-<repo>/.cache}/images/pause.tar (path on stdout)
#
# Name: registry.k8s.io/pause:3.10. kubelet 1.37 has no sandbox image setting of its own (the CRI runtime
# picks it), and containerd 1.6's CRI default `sandbox_image` is the older registry.k8s.io/pause:3.6, so
# the cluster's containerd config sets `sandbox_image` to this name (tests/e2e/nodecluster.py does).
# Set PAUSE_IMAGE to commit it under another name (and sandbox_image to match).
#
# Cached: a stamp holds a sha256 of pause.c, this script and the name; when it matches and the archive
# exists, the script exits at once. PAUSE_IMAGE_FORCE=1 rebuilds.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"
[[ "$name" == */*:* ]] || die "PAUSE_IMAGE must be a full name with a tag (got '$name')"
archive="$images_cache/pause.tar"
stamp_file="$images_cache/pause.stamp"
t_all="$(now)"

require_root
inputs="$(cat "$image_dir/pause.c" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
stamp_want="inputs=$inputs name=$name"
up_to_date() { stamp_matches "$stamp_file" "$stamp_want" && [[ -s "$archive" ]]; }

if [[ "${PAUSE_IMAGE_FORCE:-0}" != 1 ]] && up_to_date; then
  if ! podman image exists "$name"; then
    # The archive is current but the image left podman's storage (pruned): load it back for podman run.
    step "podman load $archive" podman load --quiet -i "$archive"
  fi
  log "pause: cache hit, $name is up to date ($archive, $(since "$t_all") s)"
  echo "$archive"
  exit 0
fi
"$image_dir/deps.sh"
take_lock pause
work="$(mktemp -d "$images_cache/pause.XXXXXX")"
container=""
cleanup() {
  if [[ -n "$container" ]]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
cleanup_hooks+=(cleanup)

step "gcc -static pause.c" gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/pause" "$image_dir/pause.c"
commit() {
  container="$(buildah from --quiet scratch)"
  buildah copy --quiet --chmod 0755 "$container" "$work/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.title=pause \
    --label org.opencontainers.image.source=modelarts-agent/scripts/image/pause.c "$container"
  buildah commit --quiet --format oci --rm "$container" "$name" >/dev/null
  container=""
}
step "buildah commit $name" commit
step "podman save --format oci-archive" save_archive "$name" "$archive"
printf '%s\n' "$stamp_want" >"$stamp_file"
log "pause: $name: archive $(human_size "$(stat -c %s "$archive")") at $archive, done in $(since "$t_all") s"
echo "$archive"
