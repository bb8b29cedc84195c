# Shared by the scripts in scripts/image/ (sourced, not run). Logs go to stderr; a script's stdout
# carries only its result (an archive path), so callers can do `archive=$(scripts/image/build.sh)`.
# shellcheck shell=bash

image_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$image_dir/../.." && pwd)"
cache_root="${MODELARTS_AGENT_CACHE:-$repo/.cache}"
images_cache="$cache_root/images"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$image_dir/containers.conf}"

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

now() { date +%s.%N; }
# seconds since $1 (a `now` value), one decimal
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD...: run CMD (set -e applies inside it) with its output on stderr and print its seconds.
# A failure ends the script; the EXIT trap below names the step that failed.
current_step=""
step() {
  local _step="$1" _t0
  shift
  _t0="$(now)"
  current_step="$_step"
  current_step_t0="$_t0"
  log "$_step ..."
  "$@" >&2
  current_step=""
  log "$_step: $(since "$_t0") s"
}

# on_exit: run the script's cleanup hooks, and say clearly what failed.
cleanup_hooks=()
on_exit() {
  local rc=$? hook
  for hook in "${cleanup_hooks[@]}"; do "$hook" || true; done
  if [[ $rc -ne 0 && -n "$current_step" ]]; then
    printf '[image] ERROR: %s: %s failed (exit %s after %s s; see the output above)\n' \
      "$(basename "$0")" "$current_step" "$rc" "$(since "$current_step_t0")" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT

require_root() {
  [[ "$(id -u)" == 0 ]] || die "$(basename "$0") needs root (buildah/podman/debootstrap build images as root here)"
}

# take_lock NAME: serialise concurrent runs of one script (the lead's fixture and a test may race).
take_lock() {
  mkdir -p "$images_cache"
  exec 9>"$images_cache/.$1.lock"
  flock -w 1800 9 || die "waited 30 min for $images_cache/.$1.lock (another $1 run is stuck?)"
}

# hash_paths DIR PATH...: one sha256 over the names and contents of the files under PATH... (relative
# to DIR), skipping what the build context ignores too (caches, bytecode, egg-info).
hash_paths() {
  local dir="$1"
  shift
  (
    cd "$dir"
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 -r sha256sum
  ) | sha256sum | cut -d' ' -f1
}

stamp_matches() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

# save_archive IMAGE PATH: an OCI archive that `ctr -n k8s.io images import` loads under IMAGE's name.
save_archive() {
  local image="$1" out="$2"
  rm -f "$out.tmp"
  podman save --quiet --format oci-archive -o "$out.tmp" "$image"
  mv -f "$out.tmp" "$out"
}

human_size() { numfmt --to=iec --suffix=B "$1"; }
