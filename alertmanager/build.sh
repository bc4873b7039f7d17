#!/usr/bin/env bash
# Build Alertmanager from its official source through the Go module proxy.
#
#   alertmanager/build.sh            build (or reuse) .state/alertmanager/bin/alertmanager
#   alertmanager/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/gobuild.sh"
gobuild_init alertmanager alertmanager ALERTMANAGER "${1:-}"

version="$(go list -m -f '{{.Version}}' github.com/prometheus/alertmanager)"
# Stamped the way Prometheus' promu does, so `alertmanager --version` and /api/v2/status
# report the release the binary was built from.
gobuild_run github.com/prometheus/alertmanager/cmd/alertmanager \
    "-s -w -X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=flowscope"
"$bin" --version 2>&1 | head -1
