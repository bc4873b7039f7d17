#!/usr/bin/env bash
# Build kube-apiserver from the official Kubernetes source through the Go module proxy.
#
#   kube/build.sh            build (or reuse) .state/kube/bin/kube-apiserver
#   kube/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
#
# The build is cached: the binary is kept under .state/kube/bin with a stamp of the go.mod and
# go.sum it came from; a later run with the same files does nothing. Go's own module and build
# caches make a rebuild after a version bump incremental. The machine is shared, so the build
# runs at the lowest priority on at most KUBE_BUILD_PROCS cores (default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
state="${KUBE_STATE_DIR:-$repo/.state/kube}"
bin="$state/bin/kube-apiserver"
stamp="$state/bin/kube-apiserver.stamp"
procs="${KUBE_BUILD_PROCS:-2}"

command -v go >/dev/null || { echo "build.sh: Go is not installed (need go >= 1.26)" >&2; exit 1; }

want="$(cat "$here/go.mod" "$here/go.sum" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "kube-apiserver up to date: $bin"
    exit 0
fi

mkdir -p "$state/bin"
cd "$here"
export GOMAXPROCS="$procs" GOFLAGS="-mod=mod" CGO_ENABLED=0
# -p bounds parallel compiles; -trimpath keeps the binary independent of this checkout's path.
version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$version" | cut -d. -f2)"
# The version is stamped the way Kubernetes' own build does, so clients see v1.X.Y.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
nice -n 19 go build -p "$procs" -trimpath -ldflags "$ldflags" -o "$bin.tmp" \
    k8s.io/kubernetes/cmd/kube-apiserver
mv "$bin.tmp" "$bin"
# go.sum may have been written by the build above: stamp what is there now.
cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1 > "$stamp"
"$bin" --version
