#!/usr/bin/env bash
# Build the real test components (kube-apiserver, etcd, jaeger, helm) from Go modules into a
# cache outside the source tree, keyed by version, so every clone on this machine reuses them.
#
#   build.sh [--print-bin-dir] [component ...]     components: kube-apiserver etcd jaeger helm
#
# Environment: AIORECONCILE_TESTENV_CACHE (default ~/.cache/aioreconcile/testenv).
# Each binary is built in its own small wrapper module so their dependency graphs never fight.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache_root=${AIORECONCILE_TESTENV_CACHE:-$HOME/.cache/aioreconcile/testenv}
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

say() { printf '[testenv] %s\n' "$*" >&2; }
die() { printf '[testenv] error: %s\n' "$*" >&2; exit 1; }

component_dir() {  # component -> cache directory keyed by its version
  case "$1" in
    kube-apiserver) echo "$cache_root/kube-apiserver-$KUBE_VERSION" ;;
    etcd) echo "$cache_root/etcd-$ETCD_VERSION" ;;
    jaeger) echo "$cache_root/jaeger-$JAEGER_VERSION" ;;
    helm) echo "$cache_root/helm-$HELM_VERSION" ;;
    *) die "unknown component '$1' (known: kube-apiserver etcd jaeger helm)" ;;
  esac
}

all=(etcd kube-apiserver helm jaeger)
if [[ "${1:-}" == "--print-bin-dir" ]]; then
  shift
  for c in "${@:-${all[@]}}"; do echo "$c=$(component_dir "$c")/bin/$c"; done
  exit 0
fi

command -v go >/dev/null || die "no Go toolchain on PATH: install Go >= 1.26 (the binaries are built from Go modules)"

build_failed() {  # component module log
  tail -n 40 "$3" >&2 || true
  die "building $1 from module $2 failed (full log: $3). Fix: check that the module version in $here/versions.env is served by the Go module proxy and builds with $(go env GOVERSION)."
}

# prepare_module component: fresh wrapper module directory, prints its path
prepare_module() {
  local src; src="$(component_dir "$1")/src"
  rm -rf "$src"; mkdir -p "$src"
  echo "$src"
}

install_binary() {  # component built-binary
  local bin; bin="$(component_dir "$1")/bin"
  mkdir -p "$bin"
  mv -f "$2" "$bin/$1"
}

build_kube_apiserver() {
  local src log module=k8s.io/kubernetes@$KUBE_VERSION
  src=$(prepare_module kube-apiserver); log="$src/build.log"
  (
    cd "$src"
    info=$(go mod download -json "$module") || exit 1
    dir=$(printf '%s' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    gomod=$(printf '%s' "$info" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    go_line=$(grep -m1 '^go ' "$gomod")
    # k8s.io/kubernetes requires its staging modules at v0.0.0: pin each to the published v0.x.y.
    staging_version="v0.${KUBE_VERSION#v1.}"
    {
      echo "module aioreconcile.dev/testenv/kube-apiserver"
      echo
      echo "$go_line"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" |
        while read -r m; do echo "	$m => $m $staging_version"; done
      echo ")"
    } >go.mod
    cp "$dir/cmd/kube-apiserver/apiserver.go" main.go
    chmod u+w main.go
    go mod tidy
    minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    ldflags=""
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ldflags+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
      ldflags+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=1970-01-01T00:00:00Z'"
    done
    go build -trimpath -ldflags "-s -w $ldflags" -o kube-apiserver .
  ) >"$log" 2>&1 || build_failed kube-apiserver "$module" "$log"
  install_binary kube-apiserver "$src/kube-apiserver"
}

build_etcd() {
  local src log module=go.etcd.io/etcd/server/v3@$ETCD_VERSION
  src=$(prepare_module etcd); log="$src/build.log"
  (
    cd "$src"
    go mod init aioreconcile.dev/testenv/etcd
    cat >main.go <<'GO'
// Command etcd is the unmodified etcd server, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "$module"
    go mod tidy
    go build -trimpath -ldflags "-s -w" -o etcd .
  ) >"$log" 2>&1 || build_failed etcd "$module" "$log"
  install_binary etcd "$src/etcd"
}

build_tool() {  # component module-path package version ldflags
  local src log module=$2@$4
  src=$(prepare_module "$1"); log="$src/build.log"
  (
    cd "$src"
    go mod init "aioreconcile.dev/testenv/$1"
    go get -tool "$3@$4"
    go build -trimpath -ldflags "-s -w $5" -o "$1" "$3"
  ) >"$log" 2>&1 || build_failed "$1" "$module" "$log"
  install_binary "$1" "$src/$1"
}

build() {
  case "$1" in
    kube-apiserver) build_kube_apiserver ;;
    etcd) build_etcd ;;
    jaeger) build_tool jaeger github.com/jaegertracing/jaeger github.com/jaegertracing/jaeger/cmd/jaeger "$JAEGER_VERSION" "" ;;
    helm) build_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
      "-X 'helm.sh/helm/v3/internal/version.version=$HELM_VERSION' -X 'helm.sh/helm/v3/internal/version.gitTreeState=clean'" ;;
  esac
}

locked=false
for c in "${@:-${all[@]}}"; do
  bin="$(component_dir "$c")/bin/$c"
  if [[ -x "$bin" ]]; then
    say "$c: cached at $bin"
    continue
  fi
  if ! $locked; then
    # One builder per cache at a time: a second one (another clone, CI) waits, then reuses.
    mkdir -p "$cache_root"
    exec 9>"$cache_root/build.lock"
    if ! flock -n 9; then
      say "another build is running on this cache; waiting for it"
      flock 9
    fi
    locked=true
    if [[ -x "$bin" ]]; then
      say "$c: cached at $bin (built meanwhile)"
      continue
    fi
  fi
  say "$c: building (first time on this machine; this takes minutes)..."
  start=$SECONDS
  build "$c"
  say "$c: built in $((SECONDS - start)) s -> $bin"
done
