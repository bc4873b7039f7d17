#!/usr/bin/env bash
# Regenerate go.mod/go.sum for another Kubernetes release:  kube/gomod.sh v1.37.2
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at
# v0.0.0 and replaces them with ./staging/src/... paths that exist only in its own
# repository. Each is replaced here by the published release of the same minor (v1.X.Y ->
# v0.X.Y), read from that release's own go.mod, so the list is always complete.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${1:?usage: gomod.sh v1.X.Y}"
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "gomod.sh: not a v1.X.Y version: $version" >&2; exit 2; }
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
# One release for all: the API server and the node's components share this module graph.
COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
export GOFLAGS=-mod=mod GOMAXPROCS="${KUBE_BUILD_PROCS:-2}"
upstream="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
[[ -f "$upstream" ]] || { echo "gomod.sh: could not fetch k8s.io/kubernetes@$version" >&2; exit 1; }
goline="$(grep -m1 '^go ' "$upstream")"
{
    echo '// Builds the Kubernetes binaries flowscope runs (kube-apiserver for the tests; the node'
    echo '// components for a real single-node cluster) from the official source through the Go'
    echo '// module proxy.'
    echo '// k8s.io/kubernetes replaces its staging modules with ./staging/... paths that do not'
    echo '// exist outside its own repository, so each is replaced here by its published v0.X.Y'
    echo '// release (the same code, tagged with the same release). Regenerate with ./gomod.sh.'
    echo 'module flowscope.local/kube'
    echo
    echo "$goline"
    echo
    grep -m1 '^godebug ' "$upstream" || true
    echo
    for cmd in $COMMANDS; do echo "tool k8s.io/kubernetes/cmd/$cmd"; done
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo 'replace ('
    sed -n "s#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 $staging#p" "$upstream"
    echo ')'
} > "$here/go.mod"
rm -f "$here/go.sum"
cd "$here" && nice -n 19 go mod tidy
echo "go.mod now builds $COMMANDS at $version (staging modules $staging)"
