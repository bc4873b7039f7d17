#!/usr/bin/env bash
# Build kube-apiserver from the official Kubernetes source through the Go module proxy.
#
#   kube/build.sh            build (or reuse) .state/kube/bin/kube-apiserver
#   kube/build.sh --force    rebuild even if the cached binary matches go.mod/go.sum
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/gobuild.sh"
gobuild_init kube kube-apiserver KUBE "${1:-}"

version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$version" | cut -d. -f2)"
# The version is stamped the way Kubernetes' own build does, so clients see v1.X.Y.
gobuild_run k8s.io/kubernetes/cmd/kube-apiserver \
    "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
"$bin" --version
