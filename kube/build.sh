#!/usr/bin/env bash
# Build Kubernetes binaries from the official source through the Go module proxy, one
# release for all (go.mod).
#
#   kube/build.sh            build (or reuse) .state/kube/bin/kube-apiserver (the tests' API server)
#   kube/build.sh node       build (or reuse) the node's components: kubelet, kube-proxy,
#                            kube-controller-manager, kube-scheduler, kubectl
#   kube/build.sh [node] --force   rebuild even if the cached binaries match go.mod/go.sum
set -euo pipefail
names=(kube-apiserver)
if [[ "${1:-}" == node ]]; then
    names=(kubelet kube-proxy kube-controller-manager kube-scheduler kubectl)
    shift
fi
force="${1:-}"

build_one() (
    source "$(dirname "${BASH_SOURCE[0]}")/../scripts/gobuild.sh"
    gobuild_init kube "$1" KUBE "$force"
    version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
    minor="$(echo "$version" | cut -d. -f2)"
    # The version is stamped the way Kubernetes' own build does, so clients see v1.X.Y.
    gobuild_run "k8s.io/kubernetes/cmd/$1" \
        "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    "$bin" --version 2>/dev/null || "$bin" version --client
)

for name in "${names[@]}"; do
    started=$SECONDS
    build_one "$name"
    echo "$name: $((SECONDS - started)) s"
done
