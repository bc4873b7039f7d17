# Sourced by the build.sh scripts that build a Go program from its official source through
# the Go module proxy (kube/, alertmanager/, prometheus/). Each keeps its go.mod and go.sum
# beside its build.sh.
#
# The binary is cached under .state/<state>/bin with a stamp of the go.mod and go.sum it came
# from; a later run with the same files does nothing, and `--force` rebuilds. Go's own module
# and build caches make a rebuild after a version bump incremental. The machine is shared, so
# builds run at the lowest priority on at most <PREFIX>_BUILD_PROCS cores (default 2).

# gobuild_init STATE BINARY PREFIX [--force]: sets here, state, bin, procs (the binary is
# .state/STATE/bin/BINARY unless <PREFIX>_STATE_DIR says otherwise); exits 0 when up to date.
gobuild_init() {
    local dir="$1" name="$2" prefix="$3" force="${4:-}"
    here="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
    local repo state_var procs_var
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # scripts/ sits at the top
    state_var="${prefix}_STATE_DIR"
    procs_var="${prefix}_BUILD_PROCS"
    state="${!state_var:-$repo/.state/$dir}"
    bin="$state/bin/$name"
    procs="${!procs_var:-2}"
    command -v go >/dev/null || { echo "build.sh: Go is not installed (need go >= 1.26)" >&2; exit 1; }
    if [[ "$force" != "--force" && -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$(_gobuild_want)" ]]; then
        echo "$name up to date: $bin"
        exit 0
    fi
    mkdir -p "$state/bin"
    cd "$here"
    export GOMAXPROCS="$procs" GOFLAGS="-mod=mod" CGO_ENABLED=0
}

# gobuild_run PACKAGE LDFLAGS: builds PACKAGE into $bin and stamps it.
gobuild_run() {
    # -p bounds parallel compiles; -trimpath keeps the binary independent of this checkout's path.
    nice -n 19 go build -p "$procs" -trimpath -ldflags "$2" -o "$bin.tmp" "$1"
    mv "$bin.tmp" "$bin"
    # go.sum may have been written by the build: stamp what is there now.
    _gobuild_want > "$bin.stamp"
}

_gobuild_want() {
    cat "$here/go.mod" "$here/go.sum" 2>/dev/null | sha256sum | cut -d' ' -f1
}
