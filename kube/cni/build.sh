#!/usr/bin/env bash
# Build the CNI reference plugins the single-node cluster uses from the official source
# through the Go module proxy.
#
#   kube/cni/build.sh            build (or reuse) .state/cni/bin/{bridge,host-local,loopback,portmap}
#   kube/cni/build.sh --force    rebuild even if the cached binaries match go.mod/go.sum
set -euo pipefail
force="${1:-}"

build_one() (
    source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/gobuild.sh"
    gobuild_init cni "${1##*/}" CNI "$force"
    gobuild_run "github.com/containernetworking/plugins/plugins/$1" "-s -w"
)

for plugin in main/bridge ipam/host-local main/loopback meta/portmap; do
    started=$SECONDS
    build_one "$plugin"
    echo "${plugin##*/}: $((SECONDS - started)) s"
done
