#!/usr/bin/env bash
# Build Prometheus from its official source through the Go module proxy.
#
#   prometheus/build.sh            build (or reuse) .state/prometheus/bin/prometheus
#   prometheus/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/gobuild.sh"
gobuild_init prometheus prometheus PROMETHEUS "${1:-}"

version="$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
# The module of Prometheus v3.X.Y is tagged v0.3XX.Y: stamp the release's own version.
if [[ "$version" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
    version="v3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
fi
# Stamped the way Prometheus' promu does, so `prometheus --version` and /api/v1/status/buildinfo
# report the release the binary was built from.
gobuild_run github.com/prometheus/prometheus/cmd/prometheus \
    "-s -w -X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=flowscope"
"$bin" --version 2>&1 | head -1
