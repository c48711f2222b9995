#!/usr/bin/env bash
# Build the local control plane's binaries from source through the Go module proxy, once, into a cache
# outside the checkout (CI runs in a fresh clone elsewhere and reuses it). Versions: hack/versions.env.
#
#   hack/build-tools.sh          build what is missing, print the cache's bin directories
#   TRTREFIT_CACHE=/dir ...      use another cache root
#
# Each tool lands in <cache>/<name>-<version>/ only after its build succeeded: it is built into a temp
# directory, stamped with a .complete file and renamed into place, so a killed build is never reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${TRTREFIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtrefit}

die() { echo "build-tools: $*" >&2; exit 1; }
log() { echo "build-tools: $*" >&2; }

command -v go >/dev/null 2>&1 \
  || die "no Go toolchain on PATH. Install Go >= 1.25 (https://go.dev/doc/install or 'apt-get install golang'), then run this again."
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$cache"

# is_built NAME VERSION: true when the tool's directory is complete
is_built() { [ -f "$cache/$1-$2/.complete" ]; }

# build_into NAME VERSION FUNCTION: run FUNCTION TMPDIR, then publish TMPDIR atomically.
build_into() {
  local name=$1 version=$2 fn=$3 dest="$cache/$1-$2"
  if is_built "$name" "$version"; then return 0; fi
  local tmp; tmp=$(mktemp -d "$cache/.build-$name-XXXXXX")
  local start=$SECONDS
  log "building $name $version (first time only; on 2 cores this takes minutes, kubernetes tens of minutes)"
  if ! "$fn" "$tmp" "$version"; then
    rm -rf "$tmp"
    die "building $name $version failed (see the go output above). If a module download failed, check that the Go module proxy is reachable (go env GOPROXY) and run this again."
  fi
  chmod 755 "$tmp"
  date -u +%FT%TZ > "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  log "built $name $version in $((SECONDS - start)) s -> $dest"
}

gomod_get() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'; }

build_kubernetes() {
  local out=$1 version=$2 minor src
  minor=$(echo "$version" | cut -d. -f2)
  src="$out/src"; mkdir -p "$src"
  (
    cd "$src"
    go mod init trtrefit.local/kube >/dev/null 2>&1
    # k8s.io/kubernetes points its staging modules at ./staging: pin each to the published v0.<minor>.<patch>.
    local gomod staging_version="v0.${version#v1.}"
    gomod=$(gomod_get "k8s.io/kubernetes@$version") || return 1
    {
      echo "require k8s.io/kubernetes $version"
      sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
    } >> go.mod
    cat > tools.go <<GO
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    log "resolving kubernetes $version modules"
    go mod tidy || return 1
    local pkg ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    log "compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
    go build -trimpath -ldflags "$ld" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl || return 1
  ) || return 1
  rm -rf "$src"
}

build_etcd() {
  local out=$1 version=$2 src="$1/src"
  mkdir -p "$src"
  (
    cd "$src"
    go mod init trtrefit.local/etcd >/dev/null 2>&1
    cat > main.go <<GO
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$version" || return 1
    go mod tidy || return 1
    go build -trimpath -ldflags "-s -w" -o "$out/etcd" . || return 1
  ) || return 1
  rm -rf "$src"
}

build_kwok() { GOBIN=$1 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$2"; }

build_helm() {
  GOBIN=$1 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$2 -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$2"
}

build_into etcd "$ETCD_VERSION" build_etcd
build_into kwok "$KWOK_VERSION" build_kwok
build_into helm "$HELM_VERSION" build_helm
build_into kubernetes "$KUBERNETES_VERSION" build_kubernetes

for d in "kubernetes-$KUBERNETES_VERSION" "etcd-$ETCD_VERSION" "kwok-$KWOK_VERSION" "helm-$HELM_VERSION"; do
  echo "$cache/$d"
done
