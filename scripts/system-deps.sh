#!/usr/bin/env bash
# Installs the Debian packages flowscope needs (idempotent: only what is missing).
# clang/llvm/libbpf-dev/bpftool build the BPF programs; libbpf1 is loaded by the collector;
# iproute2/nftables/iptables/conntrack build the simulated node (both kube-proxy modes);
# Java 17 + Maven run the Kafka broker;
# gcc + python3-dev build the C hot paths (setup.py).
set -euo pipefail

PACKAGES=(
  clang llvm libbpf-dev libbpf1 bpftool libelf-dev zlib1g-dev make
  iproute2 nftables iptables conntrack procps util-linux
  etcd-server openssl curl  # the real kube-apiserver the publisher is tested against
  tmux  # flowscope top is tested in a real terminal (send-keys, capture-pane)
  python3 python3-venv python3-dev gcc libc6-dev
  openjdk-17-jre-headless maven
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Java and Maven may come from elsewhere (e.g. a JDK in /opt); accept them if on PATH.
if command -v java >/dev/null && command -v mvn >/dev/null; then
  filtered=()
  for pkg in "${missing[@]}"; do
    [[ "$pkg" == openjdk-17-jre-headless || "$pkg" == maven ]] || filtered+=("$pkg")
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi

if ((${#missing[@]} == 0)); then
  echo "system-deps: all Debian packages present"
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "system-deps: missing ${missing[*]}; run as root (apt-get install)" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
