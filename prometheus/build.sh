#!/usr/bin/env bash
# Build Prometheus from its official source through the Go module proxy.
#
#   prometheus/build.sh            build (or reuse) .state/prometheus/bin/prometheus
#   prometheus/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
#
# Cached like kube/build.sh: the binary is kept under .state/prometheus/bin with a stamp of
# the go.mod and go.sum it came from; a later run with the same files does nothing. The
# machine is shared, so the build runs at the lowest priority on at most
# PROMETHEUS_BUILD_PROCS cores (default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
state="${PROMETHEUS_STATE_DIR:-$repo/.state/prometheus}"
bin="$state/bin/prometheus"
stamp="$state/bin/prometheus.stamp"
procs="${PROMETHEUS_BUILD_PROCS:-2}"

command -v go >/dev/null || { echo "build.sh: Go is not installed (need go >= 1.26)" >&2; exit 1; }

want="$(cat "$here/go.mod" "$here/go.sum" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "prometheus up to date: $bin"
    exit 0
fi

mkdir -p "$state/bin"
cd "$here"
export GOMAXPROCS="$procs" GOFLAGS="-mod=mod" CGO_ENABLED=0
version="$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
# The module of Prometheus v3.X.Y is tagged v0.3XX.Y: stamp the release's own version.
if [[ "$version" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
    version="v3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
fi
# Stamped the way Prometheus' promu does, so `prometheus --version` and /api/v1/status/buildinfo
# report the release the binary was built from.
ldflags="-s -w -X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=flowscope"
nice -n 19 go build -p "$procs" -trimpath -ldflags "$ldflags" -o "$bin.tmp" \
    github.com/prometheus/prometheus/cmd/prometheus
mv "$bin.tmp" "$bin"
cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1 > "$stamp"
"$bin" --version 2>&1 | head -1
