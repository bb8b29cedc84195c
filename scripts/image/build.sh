#!/usr/bin/env bash
# Build the project's Dockerfile without a Docker engine (buildah), on the local stand-in base image
# (base.sh), and save it as an OCI archive that `ctr -n k8s.io images import` loads under its name:
#
#   scripts/image/build.sh [--target emulator] [--tag NAME] [--context DIR] [--force]
#     -> ${MODELARTS_AGENT_CACHE:-<repo>/.cache}/images/modelarts-agent.tar   (path printed on stdout)
#     -> .../images/modelarts-emulator.tar with --target emulator (the emulator image, for the tests)
#
# The Dockerfile pins its base by digest (ARG PYTHON_BASE); here the base is the local stand-in, passed
# by its own digest (--build-arg PYTHON_BASE=<name>@sha256:...), so the build still names one exact image.
#
# --context DIR builds from a copy of the sources (its Dockerfile and what it copies) instead of the
# checkout, e.g. a `git archive` of one commit; the hash covers contents and relative names only, so an
# identical copy is a cache hit.
#
# pip inside the build reaches the package index the way this machine does: the host's pip config and
# CA bundle are mounted read-only into the build's RUN steps (never into a layer: the image stays clean).
# Cached: a stamp holds a sha256 of the inputs (the Dockerfile, .dockerignore, everything its COPY lines
# take from the context, this script, the base image ID and the tag); when it matches and the archive
# exists, the script exits at once. Progress and each step's seconds go to stderr.
#
# Environment:
#   MODELARTS_AGENT_IMAGE      image name (default localhost/modelarts-agent:dev; --tag overrides)
#   MODELARTS_EMULATOR_IMAGE   the same for --target emulator (default localhost/modelarts-emulator:dev)
#   MODELARTS_AGENT_CACHE      cache root (default: <repo>/.cache)
#   MODELARTS_AGENT_IMAGE_FORCE=1  rebuild even when the stamp matches (same as --force)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: $0 [--target emulator] [--tag NAME] [--context DIR] [--force]"
tag=""
target=runtime
force="${MODELARTS_AGENT_IMAGE_FORCE:-0}"
context="$repo"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) [[ $# -ge 2 && -n "$2" ]] || { echo "$usage" >&2; exit 2; }; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#--tag=}"; shift ;;
    --target) [[ $# -ge 2 && -n "$2" ]] || { echo "$usage" >&2; exit 2; }; target="$2"; shift 2 ;;
    --target=*) target="${1#--target=}"; shift ;;
    --context) [[ $# -ge 2 && -d "$2" ]] || { echo "$0: --context needs a directory" >&2; exit 2; }; context="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown argument: $1 ($usage)" >&2; exit 2 ;;
  esac
done
case "$target" in
  runtime) name=modelarts-agent; tag="${tag:-${MODELARTS_AGENT_IMAGE:-localhost/modelarts-agent:dev}}" ;;
  emulator) name=modelarts-emulator; tag="${tag:-${MODELARTS_EMULATOR_IMAGE:-localhost/modelarts-emulator:dev}}" ;;
  *) echo "$0: --target must be runtime (the default) or emulator, not '$target'" >&2; exit 2 ;;
esac
[[ "$tag" == */*:* ]] || die "--tag must be a full name with a tag, like localhost/modelarts-agent:dev (got '$tag')"

context="$(cd "$context" && pwd)"
dockerfile="$context/Dockerfile"
[[ -f "$dockerfile" ]] || die "no Dockerfile in $context"
archive="$images_cache/$name.tar"
stamp_file="$images_cache/$name.stamp"
t_all="$(now)"

require_root
"$image_dir/deps.sh"
"$image_dir/base.sh"

# The context paths the Dockerfile's COPY lines take (not COPY --from=stage): the last word is the
# destination, the rest are sources.
copy_sources() {
  awk '
    { sub(/\r$/, "") }
    /\\$/ { sub(/\\$/, ""); buf = buf $0 " "; next }
    { line = buf $0; buf = "" }
    toupper(line) ~ /^[ \t]*COPY[ \t]/ {
      n = split(line, w, /[ \t]+/); first = (w[1] == "" ? 2 : 1)
      skip = 0
      for (i = first + 1; i < n; i++) {
        if (w[i] ~ /^--from=/) { skip = 1; break }
        if (w[i] ~ /^--/) continue
        if (!skip) print w[i]
      }
    }' "$dockerfile"
}
mapfile -t sources < <(copy_sources)
[[ ${#sources[@]} -gt 0 ]] || die "found no COPY sources in $dockerfile"
for s in "${sources[@]}"; do
  [[ -e "$context/$s" ]] || die "the Dockerfile copies '$s', which is not in $context"
done
hash_inputs=(Dockerfile "${sources[@]}")
[[ -f "$context/.dockerignore" ]] && hash_inputs+=(.dockerignore)
base_id="$(sed -n 's/^id=//p' "$images_cache/base.stamp")"
# The stand-in by digest (its RepoDigests entry, e.g. <repository>@sha256:...), for the Dockerfile's ARG.
base_ref="$(podman image inspect --format '{{index .RepoDigests 0}}' "$base_id")"
[[ "$base_ref" == *@sha256:* ]] || die "the base image $base_id has no digest to pin ($base_ref)"
inputs="$(hash_paths "$context" "${hash_inputs[@]}")"
script="$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
stamp_want="inputs=$inputs script=$script base=$base_id tag=$tag target=$target"

if [[ "$force" != 1 ]] && stamp_matches "$stamp_file" "$stamp_want" && [[ -s "$archive" ]]; then
  take_lock build
  if ! podman image exists "$tag"; then
    # The archive is current but the image left podman's storage (pruned): load it back for podman run.
    step "podman load $archive" podman load --quiet -i "$archive"
  fi
  log "build: cache hit, $tag is up to date ($archive, $(since "$t_all") s)"
  echo "$archive"
  exit 0
fi

take_lock build
log "build: $tag from $dockerfile (inputs ${inputs:0:12})"
# pip in the RUN steps reaches the index the way the host's pip does, through one read-only mount over
# root's home (/root: a directory every base image has, so the runtime never creates a mount-point stub
# that would end up in a layer, as a file mount of /etc/pip.conf does): ~/.pip/pip.conf is the host's pip
# config, ~/.config/pip/pip.conf (read after it) points `cert` at a copy of the host's CA bundle and
# carries the host's PIP_INDEX_URL & co. Nothing of it is copied into the image.
pip_home="$images_cache/pip-home"
remove_pip_home() { rm -rf "$pip_home"; }
cleanup_hooks+=(remove_pip_home)
make_pip_home() {
  rm -rf "$pip_home"
  mkdir -p "$pip_home/.pip" "$pip_home/.config/pip"
  chmod 700 "$pip_home"
  local conf="${PIP_CONFIG_FILE:-/etc/pip.conf}" cert="" ca v
  if [[ -f "$conf" ]]; then
    cp "$conf" "$pip_home/.pip/pip.conf"
    cert="$(awk -F= '$1 ~ /^[ \t]*cert[ \t]*$/ { v = $2; gsub(/^[ \t]+|[ \t]+$/, "", v); print v; exit }' "$conf")"
  fi
  {
    echo "[global]"
    for ca in "$cert" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
      if [[ -n "$ca" && -f "$ca" ]]; then
        cp "$ca" "$pip_home/.config/pip/ca.crt"
        echo "cert = /root/.config/pip/ca.crt"
        break
      fi
    done
    for v in INDEX_URL EXTRA_INDEX_URL TRUSTED_HOST DEFAULT_TIMEOUT; do
      local name="PIP_$v"
      if [[ -n "${!name:-}" ]]; then echo "$(tr 'A-Z_' 'a-z-' <<<"$v") = ${!name}"; fi
    done
  } >"$pip_home/.config/pip/pip.conf"
  chmod -R go-rwx "$pip_home"
}
make_pip_home
mounts=(-v "$pip_home:/root:ro")
log "build: pip config for the RUN steps: ${PIP_CONFIG_FILE:-/etc/pip.conf}$( [[ -f "$pip_home/.config/pip/ca.crt" ]] && echo ' + the host CA bundle')"

previous_id="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
# The default target is the Dockerfile's last stage (the product image); the emulator is a named stage.
target_args=()
[[ "$target" == runtime ]] || target_args=(--target "$target")
step "buildah bud" buildah bud --layers --network host --pull=never --format oci \
  "${mounts[@]}" --build-arg "PYTHON_BASE=$base_ref" "${target_args[@]}" -f "$dockerfile" -t "$tag" "$context"
step "podman save --format oci-archive" save_archive "$tag" "$archive"
printf '%s\n' "$stamp_want" >"$stamp_file"
# The image this build replaced is now untagged: drop it so rebuilds do not pile up (a container using it,
# or a newer tag, keeps it).
if [[ -n "$previous_id" && "$previous_id" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]] \
    && [[ "$(podman image inspect --format '{{len .RepoTags}}' "$previous_id" 2>/dev/null)" == 0 ]]; then
  podman rmi "$previous_id" >/dev/null 2>&1 || true
fi
size="$(podman image inspect --format '{{.Size}}' "$tag")"
log "build: $tag: image $(human_size "$size"), archive $(human_size "$(stat -c %s "$archive")") at $archive"
log "build: done in $(since "$t_all") s"
echo "$archive"
