#!/usr/bin/env bash
# Build the real Kubernetes test binaries (the envtest approach) from the Go
# module proxy into an ignored cache folder:
#
#   ${MODELARTS_AGENT_CACHE:-<repo>/.cache}/testenv/bin/
#     kube-apiserver kube-controller-manager kubectl   (k8s.io/kubernetes)
#     kubelet kube-scheduler kube-proxy               (k8s.io/kubernetes; the e2e node)
#     etcd                                             (go.etcd.io/etcd/server/v3)
#     coredns                                          (github.com/coredns/coredns, reduced plugin set)
#     helm                                             (helm.sh/helm/v3)
#
# The versions are pinned by the wrapper module scripts/testenv/k8s (go.mod +
# go.sum are committed, so builds are reproducible). All the binaries are built
# by ONE `go build -o DIR pkg...` call from that one module, so shared packages
# are compiled once.
#
# etcd: built from source (go.etcd.io/etcd/server/v3 v3.7.x, the line that
# kubernetes v1.37 itself pins) rather than taken from Debian: Debian's
# etcd-server package here is 3.4.23, older than what kube-apiserver v1.37
# supports (etcd >= 3.5), and building it costs little because it shares most
# of its dependencies with kube-apiserver.
#
# Idempotent: a stamp file records the versions and a hash of the inputs; when
# it matches and every binary is present, the script exits at once.
#
# Environment:
#   MODELARTS_AGENT_CACHE  cache root (default: <repo>/.cache)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
#   TESTENV_FORCE=1        rebuild even when the stamp matches
#   TESTENV_NICE           niceness of the build (default 10)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mod_dir="$here/k8s"
cache_root="${MODELARTS_AGENT_CACHE:-$repo/.cache}"
out_dir="$cache_root/testenv"
bin_dir="$out_dir/bin"
stamp_file="$bin_dir/.stamp"

binaries=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy etcd coredns helm)
packages=(
  k8s.io/kubernetes/cmd/kube-apiserver
  k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kubectl
  k8s.io/kubernetes/cmd/kubelet
  k8s.io/kubernetes/cmd/kube-scheduler
  k8s.io/kubernetes/cmd/kube-proxy
  ./cmd/etcd
  ./cmd/coredns
  helm.sh/helm/v3/cmd/helm
)

log() { printf '[testenv-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Version of a module as pinned in the wrapper go.mod (direct requirements).
modver() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod"; }

k8s_version="$(modver k8s.io/kubernetes)"
etcd_version="$(modver go.etcd.io/etcd/server/v3)"
coredns_version="$(modver github.com/coredns/coredns)"
helm_version="$(modver helm.sh/helm/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$coredns_version" && -n "$helm_version" ]] \
  || die "could not read the pinned versions from $mod_dir/go.mod"

# The published staging modules (k8s.io/api, ...) must be the v0.X.Y twin of
# kubernetes v1.X.Y; catch a half-done bump early.
staging_version="v0.${k8s_version#v1.}"
if grep -E '^\s*k8s\.io/[a-z0-9-]+ => k8s\.io/[a-z0-9-]+ v' "$mod_dir/go.mod" \
    | grep -v -- " $staging_version\$" >/dev/null; then
  die "every k8s.io replace in $mod_dir/go.mod must point at $staging_version (kubernetes $k8s_version)"
fi

k8s_major="${k8s_version#v}"; k8s_major="${k8s_major%%.*}"
k8s_minor="${k8s_version#v*.}"; k8s_minor="${k8s_minor%%.*}"

# Version stamping, as kubernetes' hack/lib/version.sh and helm's Makefile do.
# Without it the apiserver reports v0.0.0-master, which breaks helm charts'
# kubeVersion constraints and kubectl's version-skew checks.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
ldflags+=" -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version"

# The stamp: versions, build flags and a hash of every build input.
inputs_hash="$(cd "$mod_dir" && find . -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort \
  | xargs sha256sum | sha256sum | cut -d' ' -f1)"
stamp="kubernetes=$k8s_version etcd=$etcd_version coredns=$coredns_version helm=$helm_version inputs=$inputs_hash cgo=0 ldflags=[$ldflags]"

up_to_date() {
  [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

if [[ "${TESTENV_FORCE:-0}" != 1 ]] && up_to_date; then
  log "up to date in $bin_dir (kubernetes $k8s_version, etcd $etcd_version, coredns $coredns_version, helm $helm_version)"
  exit 0
fi

mkdir -p "$out_dir"
# Serialise concurrent builds (e.g. two pytest sessions starting at once).
exec 9>"$out_dir/.build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi
if [[ "${TESTENV_FORCE:-0}" != 1 ]] && up_to_date; then
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
go_version="$("$go_cmd" env GOVERSION)"
log "using $go_cmd ($go_version)"

export CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
nice_cmd=(nice -n "${TESTENV_NICE:-10}")

log "building kubernetes $k8s_version (kube-apiserver, kube-controller-manager, kubectl, kubelet, kube-scheduler, kube-proxy), etcd $etcd_version, coredns $coredns_version, helm $helm_version"
log "into $bin_dir"
t_all=$SECONDS

cd "$mod_dir"
t=$SECONDS
log "[1/2] downloading Go modules (GOMODCACHE=$("$go_cmd" env GOMODCACHE))"
"${nice_cmd[@]}" "$go_cmd" mod download
log "[1/2] modules ready in $((SECONDS - t))s"

tmp_bin="$(mktemp -d "$out_dir/bin.tmp.XXXXXX")"
trap 'rm -rf "$tmp_bin"' EXIT
t=$SECONDS
log "[2/2] compiling and linking (one go build for all binaries; a cold build takes several minutes)"
"${nice_cmd[@]}" "$go_cmd" build -trimpath -ldflags="$ldflags" -o "$tmp_bin/" "${packages[@]}"
log "[2/2] compiled in $((SECONDS - t))s"

for b in "${binaries[@]}"; do
  [[ -x "$tmp_bin/$b" ]] || die "go build did not produce $b"
done
mkdir -p "$bin_dir"
rm -f "$stamp_file"
for b in "${binaries[@]}"; do mv -f "$tmp_bin/$b" "$bin_dir/$b"; done
printf '%s\n' "$stamp" >"$stamp_file"

log "done in $((SECONDS - t_all))s:"
for b in "${binaries[@]}"; do
  printf '[testenv-build]   %-24s %s\n' "$b" "$(du -h "$bin_dir/$b" | cut -f1)" >&2
done
