#!/usr/bin/env bash
# Build CoreDNS (its default plugin set) from the official source through the Go module proxy.
#
#   kube/coredns/build.sh            build (or reuse) .state/coredns/bin/coredns
#   kube/coredns/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/gobuild.sh"
gobuild_init coredns coredns COREDNS "${1:-}"
gobuild_run github.com/coredns/coredns "-s -w -X github.com/coredns/coredns/coremain.GitCommit=release"
"$bin" -version | head -1
