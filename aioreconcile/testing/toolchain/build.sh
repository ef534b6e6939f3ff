#!/usr/bin/env bash
# Build the real test components (kube-apiserver, etcd, jaeger, helm) from Go modules into a
# cache outside the source tree, keyed by version, so every clone on this machine reuses them.
#
#   build.sh [--print-bin-dir] [component|group ...]
#     components: kube-apiserver etcd jaeger helm
#                 kubelet kube-controller-manager kube-scheduler kube-proxy kubectl cni-plugins pause
#     groups:     control-plane (the default: etcd kube-apiserver helm jaeger)
#                 node (pause cni-plugins kubelet kube-controller-manager kube-scheduler kube-proxy
#                 kubectl; kubectl goes into the product image, for `kubectl kustomize`)
#
# Environment: AIORECONCILE_TESTENV_CACHE (default ~/.cache/aioreconcile/testenv).
# Each binary is built in its own small wrapper module so their dependency graphs never fight,
# except the node binaries of k8s.io/kubernetes (and kubectl): they share one wrapper module (the same
# dependency graph, pinned once) and are built one after the other so the shared packages compile
# once. Each build's wall time and peak RSS are written to <cache>/<component>-<version>/build.stats.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache_root=${AIORECONCILE_TESTENV_CACHE:-$HOME/.cache/aioreconcile/testenv}
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

say() { printf '[testenv] %s\n' "$*" >&2; }
die() { printf '[testenv] error: %s\n' "$*" >&2; exit 1; }

control_plane=(etcd kube-apiserver helm jaeger)
kube_node=(kubelet kube-controller-manager kube-scheduler kube-proxy kubectl)
node=(pause cni-plugins "${kube_node[@]}")
cni_plugins=(bridge loopback host-local portmap)  # the executables of the cni-plugins component

component_dir() {  # component -> cache directory keyed by its version
  case "$1" in
    kube-apiserver | kubelet | kube-controller-manager | kube-scheduler | kube-proxy | kubectl)
      echo "$cache_root/$1-$KUBE_VERSION" ;;
    etcd) echo "$cache_root/etcd-$ETCD_VERSION" ;;
    jaeger) echo "$cache_root/jaeger-$JAEGER_VERSION" ;;
    helm) echo "$cache_root/helm-$HELM_VERSION" ;;
    cni-plugins) echo "$cache_root/cni-plugins-$CNI_PLUGINS_VERSION" ;;
    pause) echo "$cache_root/pause-$PAUSE_VERSION" ;;
    *) die "unknown component '$1' (known: ${control_plane[*]} ${node[*]}; groups: control-plane node)" ;;
  esac
}

component_binaries() {  # component -> the executables that must exist for it to count as built
  case "$1" in
    cni-plugins) printf '%s\n' "${cni_plugins[@]}" ;;
    *) echo "$1" ;;
  esac
}

is_built() {
  local b dir; dir="$(component_dir "$1")/bin"
  for b in $(component_binaries "$1"); do [[ -x "$dir/$b" ]] || return 1; done
}

print_bin_dir=false
if [[ "${1:-}" == "--print-bin-dir" ]]; then print_bin_dir=true; shift; fi
# The arguments, groups expanded (no argument: the control plane). Checked here, in this shell,
# so an unknown name stops the script instead of vanishing in a command substitution.
components=()
for a in "${@:-control-plane}"; do
  case "$a" in
    control-plane) components+=("${control_plane[@]}") ;;
    node) components+=("${node[@]}") ;;
    *) component_dir "$a" >/dev/null; components+=("$a") ;;
  esac
done

if $print_bin_dir; then
  for c in "${components[@]}"; do
    echo "$c=$(component_dir "$c")/bin/$(component_binaries "$c" | head -n1)"
  done
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

install_binary() {  # component built-binary [name]
  local bin; bin="$(component_dir "$1")/bin"
  mkdir -p "$bin"
  mv -f "$2" "$bin/${3:-$1}"
}

measured() {  # stats-file command...: run it, append "wall_s=.. max_rss_kb=.." (GNU time) to the file
  local stats=$1; shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -a -o "$stats" -f 'wall_s=%e max_rss_kb=%M' "$@"
  else
    "$@"
  fi
}

# kube_wrapper_module name: write go.mod requiring k8s.io/kubernetes in the current directory, with
# every staging module pinned to its published v0.x.y; prints the module's source directory.
kube_wrapper_module() {
  local info dir gomod go_line staging_version
  info=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION") || return 1
  dir=$(printf '%s' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  gomod=$(printf '%s' "$info" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  go_line=$(grep -m1 '^go ' "$gomod")
  # k8s.io/kubernetes requires its staging modules at v0.0.0: pin each to the published v0.x.y.
  staging_version="v0.${KUBE_VERSION#v1.}"
  {
    echo "module aioreconcile.dev/testenv/$1"
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
  echo "$dir"
}

kube_ldflags() {  # the version stamps `kubectl version` and the components report
  local pkg minor=${KUBE_VERSION#v1.} flags=""
  minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
    flags+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=1970-01-01T00:00:00Z'"
  done
  echo "-s -w$flags"
}

build_kube_apiserver() {
  local src log module=k8s.io/kubernetes@$KUBE_VERSION
  src=$(prepare_module kube-apiserver); log="$src/build.log"
  (
    cd "$src"
    dir=$(kube_wrapper_module kube-apiserver) || exit 1
    cp "$dir/cmd/kube-apiserver/apiserver.go" main.go
    chmod u+w main.go
    go mod tidy
    go build -trimpath -ldflags "$(kube_ldflags)" -o kube-apiserver .
  ) >"$log" 2>&1 || build_failed kube-apiserver "$module" "$log"
  install_binary kube-apiserver "$src/kube-apiserver"
}

# The node's binaries and kubectl: one wrapper module under kube-node-<version>/src with a main package
# per command (copied from k8s.io/kubernetes/cmd/<name>), built one after the other in the same
# Go build cache so kubelet pays for the shared packages and the others reuse them.
kube_node_main() {  # command -> its main file in k8s.io/kubernetes
  case "$1" in
    kubelet) echo cmd/kubelet/kubelet.go ;;
    kube-controller-manager) echo cmd/kube-controller-manager/controller-manager.go ;;
    kube-scheduler) echo cmd/kube-scheduler/scheduler.go ;;
    kube-proxy) echo cmd/kube-proxy/proxy.go ;;
    kubectl) echo cmd/kubectl/kubectl.go ;;
  esac
}

build_kube_node() {  # builds each of "${kube_node[@]}" not built yet
  local src log c module=k8s.io/kubernetes@$KUBE_VERSION
  src="$cache_root/kube-node-$KUBE_VERSION/src"
  mkdir -p "$src"; log="$src/build.log"
  (
    cd "$src"
    dir=$(kube_wrapper_module kube-node) || exit 1
    for c in "${kube_node[@]}"; do
      mkdir -p "cmd/$c"
      cp "$dir/$(kube_node_main "$c")" "cmd/$c/main.go"
      chmod u+w "cmd/$c/main.go"
    done
    go mod tidy
    ldflags=$(kube_ldflags)
    for c in "${kube_node[@]}"; do
      is_built "$c" && continue
      stats="$(component_dir "$c")/build.stats"
      mkdir -p "$(dirname "$stats")"; : >"$stats"
      echo "== $c" >&2
      measured "$stats" go build -trimpath -ldflags "$ldflags" -o "$c" "./cmd/$c"
      install_binary "$c" "$src/$c"
      printf '[testenv] %s: %s\n' "$c" "$(tail -n1 "$stats")" >&2
    done
  ) 2>&1 | tee -a "$log" | grep --line-buffered '^\[testenv\]' >&2 || true
  for c in "${kube_node[@]}"; do is_built "$c" || build_failed "$c" "$module" "$log"; done
}

build_cni_plugins() {
  local src log c module=github.com/containernetworking/plugins@$CNI_PLUGINS_VERSION
  src=$(prepare_module cni-plugins); log="$src/build.log"
  : >"$(component_dir cni-plugins)/build.stats"
  (
    cd "$src"
    go mod init aioreconcile.dev/testenv/cni-plugins
    plugins=(main/bridge main/loopback ipam/host-local meta/portmap)
    for c in "${plugins[@]}"; do
      go get -tool "github.com/containernetworking/plugins/plugins/$c@$CNI_PLUGINS_VERSION"
    done
    mkdir -p out
    for c in "${plugins[@]}"; do
      CGO_ENABLED=0 measured "$(component_dir cni-plugins)/build.stats" \
        go build -trimpath -ldflags "-s -w" -o "out/${c#*/}" "github.com/containernetworking/plugins/plugins/$c"
    done
  ) >"$log" 2>&1 || build_failed cni-plugins "$module" "$log"
  for c in "${cni_plugins[@]}"; do install_binary cni-plugins "$src/out/$c" "$c"; done
}

# The sandbox ("pause") process of every pod: it only has to exist and reap. A static Go program,
# so the FROM-scratch pause image needs nothing else (upstream's is C; same job).
build_pause() {
  local src log
  src=$(prepare_module pause); log="$src/build.log"
  (
    cd "$src"
    go mod init aioreconcile.dev/testenv/pause
    cat >main.go <<'GO'
// Command pause holds a pod's namespaces open until it is told to stop, and reaps orphans
// (it is PID 1 of the sandbox), like Kubernetes' build/pause/linux/pause.c.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o pause .
  ) >"$log" 2>&1 || build_failed pause "Go standard library" "$log"
  install_binary pause "$src/pause"
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
    kubelet | kube-controller-manager | kube-scheduler | kube-proxy | kubectl) build_kube_node ;;
    cni-plugins) build_cni_plugins ;;
    pause) build_pause ;;
  esac
}

locked=false
for c in "${components[@]}"; do
  bin="$(component_dir "$c")/bin/$(component_binaries "$c" | head -n1)"
  if is_built "$c"; then
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
    if is_built "$c"; then
      say "$c: cached at $bin (built meanwhile)"
      continue
    fi
  fi
  say "$c: building (first time on this machine; this takes minutes)..."
  start=$SECONDS
  build "$c"
  say "$c: built in $((SECONDS - start)) s -> $bin"
done
