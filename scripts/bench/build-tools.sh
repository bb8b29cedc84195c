#!/usr/bin/env bash
# Build the benchmark tools from the pinned wrapper module scripts/bench/go into
# an ignored cache folder:
#
#   ${MODELARTS_AGENT_CACHE:-<repo>/.cache}/bench/bin/
#     vegeta     open-loop HTTP load generator (github.com/tsenart/vegeta/v12)
#     upstream   tiny Go inference-instance stand-in (scripts/bench/go/upstream)
#     xds-reference  ADS server on go-control-plane (its own module, scripts/bench/xds-reference),
#                the reference bench/xds_compare.py measures the agent's xDS server against
#
# Both go.mod + go.sum are committed, so every machine builds the same versions.
# Idempotent: a stamp records a hash of the inputs; when it matches and both
# binaries are there, the script exits at once.
#
# Environment:
#   MODELARTS_AGENT_CACHE  cache root (default: <repo>/.cache)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
#   BENCH_TOOLS_FORCE=1    rebuild even when the stamp matches
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mod_dir="$here/go"
cache_root="${MODELARTS_AGENT_CACHE:-$repo/.cache}"
bin_dir="$cache_root/bench/bin"
stamp_file="$bin_dir/.stamp"
binaries=(vegeta upstream xds-reference)
ref_dir="$here/xds-reference"

log() { printf '[bench-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

vegeta_version="$(awk '{ if ($1 == "require") $0 = substr($0, 9) } $1 == "github.com/tsenart/vegeta/v12" && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
[[ -n "$vegeta_version" ]] || die "could not read the pinned vegeta version from $mod_dir/go.mod"

gcp_version="$(awk '{ if ($1 == "require") $0 = substr($0, 9) } $1 == "github.com/envoyproxy/go-control-plane" && $2 ~ /^v/ { print $2; exit }' "$ref_dir/go.mod")"
[[ -n "$gcp_version" ]] || die "could not read the pinned go-control-plane version from $ref_dir/go.mod"

inputs_hash="$(cd "$here" && find go xds-reference -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort \
  | xargs sha256sum | sha256sum | cut -d' ' -f1)"
stamp="vegeta=$vegeta_version go-control-plane=$gcp_version inputs=$inputs_hash cgo=0 ldflags=version"

up_to_date() {
  [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

if [[ "${BENCH_TOOLS_FORCE:-0}" != 1 ]] && up_to_date; then
  log "up to date in $bin_dir (vegeta $vegeta_version)"
  exit 0
fi

mkdir -p "$bin_dir"
exec 9>"$bin_dir/.build.lock"
flock 9
if [[ "${BENCH_TOOLS_FORCE:-0}" != 1 ]] && up_to_date; then
  log "up to date in $bin_dir (built by a concurrent run)"
  exit 0
fi

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
  if command -v go >/dev/null 2>&1; then go_cmd="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then go_cmd=/usr/local/go/bin/go
  else die "no Go toolchain found (set GO=/path/to/go); Go >= 1.26 is needed"
  fi
fi
log "using $go_cmd ($("$go_cmd" env GOVERSION)); building vegeta $vegeta_version, upstream and xds-reference (go-control-plane $gcp_version) into $bin_dir"

export CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
cd "$mod_dir"
"$go_cmd" mod download
tmp_bin="$(mktemp -d "$bin_dir/tmp.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
"$go_cmd" build -trimpath -ldflags="-s -w -X main.Version=$vegeta_version" -o "$tmp_bin/" github.com/tsenart/vegeta/v12 ./upstream
(cd "$ref_dir" && "$go_cmd" mod download && "$go_cmd" build -trimpath -ldflags="-s -w" -o "$tmp_bin/xds-reference" .)
for b in "${binaries[@]}"; do
  [[ -x "$tmp_bin/$b" ]] || die "go build did not produce $b"
  mv -f "$tmp_bin/$b" "$bin_dir/$b"
done
printf '%s\n' "$stamp" >"$stamp_file"
log "done: $(cd "$bin_dir" && ls "${binaries[@]}" | tr '\n' ' ')"
