#!/usr/bin/env bash
# Build containerd 2.x, its runc shim and ctr from the official source through the Go module
# proxy (runc itself is meant to come from Debian: apt-get install runc).
#
#   kube/containerd/build.sh            build (or reuse) .state/containerd/bin/{containerd,...}
#   kube/containerd/build.sh --force    rebuild even if the cached binaries match go.mod/go.sum
set -euo pipefail
force="${1:-}"

build_one() (
    source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/gobuild.sh"
    gobuild_init containerd "$1" CONTAINERD "$force"
    version="$(go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)"
    # No btrfs (needs cgo and its headers) or devmapper snapshotters: overlayfs is the default.
    GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper" gobuild_run \
        "github.com/containerd/containerd/v2/cmd/$1" \
        "-s -w -X github.com/containerd/containerd/v2/version.Version=$version"
)

for name in containerd containerd-shim-runc-v2 ctr; do
    started=$SECONDS
    build_one "$name"
    echo "$name: $((SECONDS - started)) s"
done
