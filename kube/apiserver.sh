#!/usr/bin/env bash
# A real kube-apiserver with etcd on loopback, for tests and the demo.
#
#   kube/apiserver.sh start    build (cached) kube-apiserver, start etcd and the API server,
#                              wait until /readyz answers, write a kubeconfig; idempotent
#   kube/apiserver.sh stop     stop both (data is removed: every start is a fresh cluster)
#   kube/apiserver.sh status   say whether they run
#   kube/apiserver.sh kubeconfig   print the kubeconfig path
#
# Everything lives under .state/kube/run (KUBE_RUN_DIR): generated CA, serving certificate,
# service-account keys, a static admin token, logs, pid files. The API server trusts the
# token (user "flowscope-admin", group system:masters) and serves only on 127.0.0.1.
# etcd is Debian's etcd-server. Ports: KUBE_APISERVER_PORT (16443), KUBE_ETCD_PORT (23790),
# KUBE_ETCD_PEER_PORT (23800). No controller-manager or scheduler runs: objects are stored
# and watched, nothing reconciles them (a pod stays as the test writes it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
state="${KUBE_STATE_DIR:-$repo/.state/kube}"
run="${KUBE_RUN_DIR:-$state/run}"
api_port="${KUBE_APISERVER_PORT:-16443}"
etcd_port="${KUBE_ETCD_PORT:-23790}"
etcd_peer_port="${KUBE_ETCD_PEER_PORT:-23800}"
bin="$state/bin/kube-apiserver"
kubeconfig="$run/kubeconfig"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

need() {
    command -v "$1" >/dev/null || { echo "apiserver.sh: $1 not found: install $2" >&2; exit 1; }
}

certs() {
    mkdir -p "$run/pki"
    local p="$run/pki"
    [[ -f "$p/apiserver.crt" ]] && return
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=flowscope-test-ca" \
        -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n' \
        > "$p/san.ext"
    openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" \
        -CAcreateserial -days 30 -extfile "$p/san.ext" -out "$p/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
    # A fresh random token per cluster; kube-apiserver reads it from this static file.
    printf '%s,flowscope-admin,flowscope-admin,system:masters\n' \
        "$(openssl rand -hex 24)" > "$p/tokens.csv"
    chmod 600 "$p"/*.key "$p/tokens.csv"
}

write_kubeconfig() {
    local token ca
    token="$(cut -d, -f1 "$run/pki/tokens.csv")"
    ca="$(base64 -w0 < "$run/pki/ca.crt")"
    umask 077
    cat > "$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: flowscope-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $ca
users:
- name: flowscope-admin
  user:
    token: $token
contexts:
- name: flowscope-test
  context: {cluster: flowscope-test, user: flowscope-admin}
current-context: flowscope-test
EOF
}

wait_ready() {
    local token deadline
    token="$(cut -d, -f1 "$run/pki/tokens.csv")"
    deadline=$((SECONDS + ${KUBE_START_TIMEOUT_S:-120}))
    until curl -sf --cacert "$run/pki/ca.crt" -H "Authorization: Bearer $token" \
        "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; do
        if ! alive "$run/apiserver.pid"; then
            echo "apiserver.sh: kube-apiserver exited; last log lines:" >&2
            tail -20 "$run/apiserver.log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "apiserver.sh: kube-apiserver not ready within ${KUBE_START_TIMEOUT_S:-120}s" >&2
            tail -20 "$run/apiserver.log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

start() {
    need etcd "Debian's etcd-server (apt-get install etcd-server)"
    need openssl "openssl"
    need curl "curl"
    "$here/build.sh"
    if alive "$run/apiserver.pid" && alive "$run/etcd.pid"; then
        echo "already running: https://127.0.0.1:$api_port (kubeconfig $kubeconfig)"
        return
    fi
    stop >/dev/null
    mkdir -p "$run"
    certs
    # Without a unit file, etcd runs as a plain child; ETCD_UNSUPPORTED_ARCH is not needed
    # on amd64. The data dir is per start: tests begin from an empty cluster.
    setsid etcd --name flowscope-test --data-dir "$run/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster "flowscope-test=http://127.0.0.1:$etcd_peer_port" \
        --quota-backend-bytes 1073741824 \
        > "$run/etcd.log" 2>&1 < /dev/null &
    echo $! > "$run/etcd.pid"
    local p="$run/pki"
    # Loopback only, so no endpoint reconciler (it refuses 127.0.0.1 as the advertised
    # address). ServiceAccount admission is off: no controller creates the namespaces' default
    # service accounts, and pods would be refused without them.
    setsid "$bin" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --token-auth-file "$p/tokens.csv" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$p/sa.pub" \
        --service-account-signing-key-file "$p/sa.key" \
        --service-cluster-ip-range 10.0.0.0/24 \
        --disable-admission-plugins ServiceAccount \
        --endpoint-reconciler-type none \
        --profiling=false \
        --cert-dir "$run/certs" \
        > "$run/apiserver.log" 2>&1 < /dev/null &
    echo $! > "$run/apiserver.pid"
    write_kubeconfig
    wait_ready
    echo "kube-apiserver ready: https://127.0.0.1:$api_port (kubeconfig $kubeconfig)"
}

stop() {
    local name
    for name in apiserver etcd; do
        if alive "$run/$name.pid"; then
            kill "$(cat "$run/$name.pid")"
            for _ in $(seq 1 50); do alive "$run/$name.pid" || break; sleep 0.2; done
            alive "$run/$name.pid" && kill -9 "$(cat "$run/$name.pid")"
        fi
        rm -f "$run/$name.pid"
    done
    rm -rf "$run/etcd"
    echo "stopped"
}

status() {
    if alive "$run/apiserver.pid" && alive "$run/etcd.pid"; then
        echo "running: kube-apiserver pid $(cat "$run/apiserver.pid"), etcd pid $(cat "$run/etcd.pid"), https://127.0.0.1:$api_port"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    kubeconfig) echo "$kubeconfig" ;;
    *) echo "usage: $0 start|stop|status|kubeconfig" >&2; exit 2 ;;
esac
