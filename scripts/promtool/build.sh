#!/usr/bin/env bash
# Build promtool (github.com/prometheus/prometheus/cmd/promtool) from the Go module
# proxy, pinned by the wrapper module scripts/promtool/go, into an ignored cache folder:
#
#   ${MODELARTS_AGENT_CACHE:-<repo>/.cache}/promtool/bin/promtool
#
# The tests use it to run `promtool test rules` on the chart's alert rules
# (tests/observability/test_alert_rules.py). go.mod + go.sum are committed, so every
# machine builds the same version. Idempotent: a stamp records a hash of the inputs;
# when it matches and the binary is there, the script exits at once.
#
# Environment:
#   MODELARTS_AGENT_CACHE  cache root (default: <repo>/.cache)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
#   PROMTOOL_FORCE=1       rebuild even when the stamp matches
#   PROMTOOL_NICE          niceness of the build (default 10)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mod_dir="$here/go"
cache_root="${MODELARTS_AGENT_CACHE:-$repo/.cache}"
bin_dir="$cache_root/promtool/bin"
stamp_file="$bin_dir/.stamp"

log() { printf '[promtool-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version="$(awk '{ if ($1 == "require") $0 = substr($0, 9) } $1 == "github.com/prometheus/prometheus" && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
[[ -n "$version" ]] || die "could not read the pinned prometheus version from $mod_dir/go.mod"

inputs_hash="$(cd "$mod_dir" && find . -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort \
  | xargs sha256sum | sha256sum | cut -d' ' -f1)"
# remove_all_sd: promtool without the service-discovery plugins (AWS, Azure, GCE, Kubernetes, ...),
# which `promtool test rules` never uses; it halves what has to be compiled.
tags=remove_all_sd
stamp="prometheus=$version inputs=$inputs_hash cgo=0 tags=$tags ldflags=version"

up_to_date() { [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" && -x "$bin_dir/promtool" ]]; }

if [[ "${PROMTOOL_FORCE:-0}" != 1 ]] && up_to_date; then
  log "up to date in $bin_dir (prometheus $version)"
  exit 0
fi

mkdir -p "$bin_dir"
# Serialise concurrent builds (e.g. two pytest sessions starting at once).
exec 9>"$bin_dir/.build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi
if [[ "${PROMTOOL_FORCE:-0}" != 1 ]] && up_to_date; then
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
log "using $go_cmd ($("$go_cmd" env GOVERSION)); building promtool (prometheus $version) into $bin_dir"

export CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
nice_cmd=(nice -n "${PROMTOOL_NICE:-10}")
cd "$mod_dir"
t=$SECONDS
"${nice_cmd[@]}" "$go_cmd" mod download
tmp_bin="$(mktemp -d "$bin_dir/tmp.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
"${nice_cmd[@]}" "$go_cmd" build -trimpath -tags "$tags" \
  -ldflags="-s -w -X github.com/prometheus/common/version.Version=${version#v}" \
  -o "$tmp_bin/" github.com/prometheus/prometheus/cmd/promtool
[[ -x "$tmp_bin/promtool" ]] || die "go build did not produce promtool"
mv -f "$tmp_bin/promtool" "$bin_dir/promtool"
printf '%s\n' "$stamp" >"$stamp_file"
log "done in $((SECONDS - t))s: $bin_dir/promtool"
