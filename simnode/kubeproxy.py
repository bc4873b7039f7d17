"""Service NAT as kube-proxy programs it: in the node's root network namespace.

kube-proxy never touches a pod's namespace. It hooks the root namespace's nat PREROUTING
(packets leaving a pod's veth arrive there, bridged ones through br_netfilter) and OUTPUT
(host processes and hostNetwork pods), matches ClusterIP:port and DNATs to a ready endpoint
picked at random, so the conntrack entry that records the translation is the root
namespace's. Both modes a kernel without IPVS can run are modelled, shaped as kube-proxy's
own rules (pkg/proxy/iptables and pkg/proxy/nftables), with names carrying the run id so that
concurrent runs never share a chain and ``sweep`` finds a crashed run's rules:

* ``nftables``: table ``ip fs-<run>-kp`` with ``nat-prerouting`` / ``nat-output`` jumping to
  ``services``, a ``service-ips`` verdict map of ClusterIP . proto . port, one chain per
  service port choosing an endpoint with ``numgen random mod N``, one chain per endpoint
  doing ``dnat to``; hairpin traffic (an endpoint reaching itself) is marked and masqueraded.
* ``iptables``: ``FS-<run>-SERVICES`` jumped to from nat PREROUTING and OUTPUT,
  ``FS-<run>-SVC-<n>`` with ``statistic --mode random`` per endpoint, ``FS-<run>-SEP-<n>``
  with ``DNAT --to-destination``, loaded with ``iptables-restore --noflush``.
* ``socket-lb`` (Cilium's or Calico's eBPF service handling): no NAT rule at all; the
  connect() is rewritten to a backend before a packet exists, so clients address the
  backend (``Cluster.backend_of``) and the socket's peer is the backend.

Rules are rewritten whole at every change (kube-proxy's full sync) in one transaction.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from simnode.errors import SimNodeError
from simnode.names import run_id_of, run_tag

KubeProxyMode = Literal["nftables", "iptables", "socket-lb"]
KUBE_PROXY_MODES: tuple[KubeProxyMode, ...] = ("nftables", "iptables", "socket-lb")
MASQ_MARK = "0x4000"  # kube-proxy's --masquerade-bit 14


@dataclass(frozen=True)
class ServicePortRule:
    """One ClusterIP port and the endpoints (pod IP, target port) behind it."""

    name: str  # namespace/name:port, for comments
    cluster_ip: str
    protocol: str  # "tcp" or "udp"
    port: int
    endpoints: tuple[tuple[str, int], ...]


def nft_table(run_id: str, family: int) -> str:
    return f"{run_tag(run_id)}-kp{'' if family == 4 else '6'}"


def iptables_chain(run_id: str, what: str) -> str:
    # iptables chain names are at most 28 characters: fs-<6 hex>- leaves 18.
    return f"{run_tag(run_id).upper()}-{what}"


def render_nft(run_id: str, family: int, rules: Sequence[ServicePortRule]) -> str:
    """The whole table as an ``nft -f`` transaction (deleting the old one first)."""
    fam = "ip" if family == 4 else "ip6"
    addr_type = "ipv4_addr" if family == 4 else "ipv6_addr"
    table = nft_table(run_id, family)
    lines = [
        f"table {fam} {table} {{}}",
        f"delete table {fam} {table}",
        f"table {fam} {table} {{",
        "  chain nat-prerouting { type nat hook prerouting priority dstnat; jump services; }",
        "  chain nat-output { type nat hook output priority -100; jump services; }",
        "  chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading; }",
        f"  chain mark-for-masquerade {{ mark set mark or {MASQ_MARK}; }}",
        f"  chain masquerading {{ mark and {MASQ_MARK} == 0 return; "
        f"mark set mark xor {MASQ_MARK}; masquerade fully-random; }}",
    ]
    elements: list[str] = []
    for n, rule in enumerate(rules):
        if not rule.endpoints:
            continue  # kube-proxy rejects these in the filter table; nothing to DNAT
        svc_chain = f"service-{n}"
        verdicts = ", ".join(f"{i} : goto endpoint-{n}-{i}" for i in range(len(rule.endpoints)))
        lines.append(
            f"  chain {svc_chain} {{ numgen random mod {len(rule.endpoints)} "
            f"vmap {{ {verdicts} }}; }}"
        )
        for i, (ip, port) in enumerate(rule.endpoints):
            target = f"{ip}:{port}" if family == 4 else f"[{ip}]:{port}"
            lines.append(
                f"  chain endpoint-{n}-{i} {{ {fam} saddr {ip} jump mark-for-masquerade; "
                f"meta l4proto {rule.protocol} dnat to {target}; }}"
            )
        elements.append(f"{rule.cluster_ip} . {rule.protocol} . {rule.port} : goto {svc_chain}")
    lines.append(f"  map service-ips {{ type {addr_type} . inet_proto . inet_service : verdict; }}")
    lines.append(f"  chain services {{ {fam} daddr . meta l4proto . th dport vmap @service-ips; }}")
    lines.append("}")
    if elements:
        lines.append(f"add element {fam} {table} service-ips {{ {', '.join(elements)} }}")
    return "\n".join(lines) + "\n"


def render_iptables(run_id: str, family: int, rules: Sequence[ServicePortRule]) -> str:
    """The run's chains for ``iptables-restore --noflush`` (the jump rules are added apart)."""
    services = iptables_chain(run_id, "SERVICES")
    mark = iptables_chain(run_id, "MARK-MASQ")
    post = iptables_chain(run_id, "POSTRTG")
    chains = [services, mark, post]
    body = [
        f"-A {mark} -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}",
        f"-A {post} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A {post} -j MARK --set-xmark {MASQ_MARK}/0x0",
        f"-A {post} -j MASQUERADE --random-fully",
    ]
    host_len = 32 if family == 4 else 128
    for n, rule in enumerate(rules):
        if not rule.endpoints:
            continue
        svc = iptables_chain(run_id, f"SVC-{n}")
        chains.append(svc)
        body.append(
            f"-A {services} -d {rule.cluster_ip}/{host_len} -p {rule.protocol} "
            f'-m comment --comment "{rule.name} cluster IP" -m {rule.protocol} '
            f"--dport {rule.port} -j {svc}"
        )
        count = len(rule.endpoints)
        for i, (ip, port) in enumerate(rule.endpoints):
            sep = iptables_chain(run_id, f"SEP-{n}-{i}")
            chains.append(sep)
            # Endpoint i of the remaining count - i is picked with probability 1/(count - i),
            # so each is equally likely; the last one takes what is left.
            pick = (
                f"-m statistic --mode random --probability {1 / (count - i):.11f} "
                if i < count - 1
                else ""
            )
            body.append(f"-A {svc} {pick}-j {sep}")
            target = f"{ip}:{port}" if family == 4 else f"[{ip}]:{port}"
            body.append(f"-A {sep} -s {ip}/{host_len} -j {mark}")
            body.append(
                f"-A {sep} -p {rule.protocol} -m {rule.protocol} -j DNAT --to-destination {target}"
            )
    head = ["*nat", *(f":{c} - [0:0]" for c in chains)]
    return "\n".join([*head, *body, "COMMIT"]) + "\n"


class KubeProxy:
    """Programs one run's Service rules in the root namespace, for one or both IP families."""

    def __init__(self, run_id: str, mode: KubeProxyMode) -> None:
        if mode not in KUBE_PROXY_MODES:
            raise SimNodeError(f"unknown kube-proxy mode {mode!r}; valid: {KUBE_PROXY_MODES}")
        self.run_id = run_id
        self.mode = mode
        self._jumps_installed: set[int] = set()
        tool = {"nftables": "nft", "iptables": "iptables-restore"}.get(mode)
        if tool is not None and shutil.which(tool) is None:
            package = "nftables" if tool == "nft" else "iptables"
            raise SimNodeError(f"kube-proxy mode {mode} needs {tool} (apt-get install {package})")

    def sync(self, rules: Sequence[ServicePortRule]) -> None:
        """Rewrite every rule of the run from ``rules`` (both families)."""
        if self.mode == "socket-lb":
            return
        for family in (4, 6):
            mine = [r for r in rules if ipaddress.ip_address(r.cluster_ip).version == family]
            if not mine and family not in self._jumps_installed:
                continue
            if self.mode == "nftables":
                _feed(["nft", "-f", "-"], render_nft(self.run_id, family, mine))
            else:
                self._sync_iptables(family, mine)

    def _sync_iptables(self, family: int, rules: Sequence[ServicePortRule]) -> None:
        restore = "iptables-restore" if family == 4 else "ip6tables-restore"
        _feed(
            [restore, "--noflush", "-w"],
            _flush_chains(self.run_id, family) + render_iptables(self.run_id, family, rules),
        )
        if family in self._jumps_installed:
            return
        tool = "iptables" if family == 4 else "ip6tables"
        services = iptables_chain(self.run_id, "SERVICES")
        post = iptables_chain(self.run_id, "POSTRTG")
        for hook, target in (("PREROUTING", services), ("OUTPUT", services), ("POSTROUTING", post)):
            _run([tool, "-w", "-t", "nat", "-I", hook, "-j", target])
        self._jumps_installed.add(family)

    def close(self) -> list[str]:
        return remove_rules(self.run_id)


def _saved_nat(family: int) -> list[str] | None:
    """The nat table as ``iptables-save`` prints it; None when the tool is not installed or
    the table cannot be read."""
    tool = "iptables-save" if family == 4 else "ip6tables-save"
    if shutil.which(tool) is None:
        return None
    saved = subprocess.run([tool, "-t", "nat"], capture_output=True, text=True, check=False)
    return saved.stdout.splitlines() if saved.returncode == 0 else None


def _chains(saved: list[str], prefix: str = "") -> list[str]:
    """The chains declared in ``saved`` whose names start with ``prefix``."""
    return [line[1:].split()[0] for line in saved if line.startswith(":" + prefix)]


def _flush_chains(run_id: str, family: int) -> str:
    """Delete the run's existing chains first, so a resync leaves no stale endpoint chain."""
    mine = _chains(_saved_nat(family) or [], iptables_chain(run_id, ""))
    if not mine:
        return ""
    lines = ["*nat", *(f"-F {c}" for c in mine)]
    # Chains other than SERVICES/POSTRTG are only referenced from the run's own chains.
    lines += [f"-X {c}" for c in mine if not c.endswith(("-SERVICES", "-POSTRTG"))]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def remove_rules(run_id: str) -> list[str]:
    """Remove every nftables table and iptables chain of a run; returns the problems."""
    problems: list[str] = []
    for family in (4, 6):
        fam = "ip" if family == 4 else "ip6"
        table = nft_table(run_id, family)
        if shutil.which("nft") and table in list_nft_tables(fam):
            err = _try(["nft", "delete", "table", fam, table])
            if err:
                problems.append(err)
        problems += _remove_iptables(run_id, family)
    return problems


def list_nft_tables(family: str) -> list[str]:
    shown = subprocess.run(
        ["nft", "list", "tables", family], capture_output=True, text=True, check=False
    )
    return [line.split()[-1] for line in shown.stdout.splitlines() if line.startswith("table")]


def run_ids_with_rules() -> set[str]:
    """Run ids that own an nftables table or an iptables chain (for ``sweep``)."""
    found: set[str] = set()
    if shutil.which("nft"):
        for fam in ("ip", "ip6"):
            found |= {rid for t in list_nft_tables(fam) if (rid := run_id_of(t))}
    for family in (4, 6):
        found |= {rid for c in _chains(_saved_nat(family) or []) if (rid := run_id_of(c.lower()))}
    return found


def _remove_iptables(run_id: str, family: int) -> list[str]:
    tool = "iptables" if family == 4 else "ip6tables"
    saved = _saved_nat(family)
    if saved is None:
        return []
    prefix = iptables_chain(run_id, "")
    problems: list[str] = []
    for line in saved:
        # The jumps into the run's chains from the built-in ones go first.
        if (
            line.startswith("-A ")
            and f"-j {prefix}" in line
            and not line.split()[1].startswith(prefix)
        ):
            err = _try([tool, "-w", "-t", "nat", "-D", *line.split()[1:]])
            if err:
                problems.append(err)
    chains = _chains(saved, prefix)
    for chain in chains:
        _try([tool, "-w", "-t", "nat", "-F", chain])
    for chain in chains:
        err = _try([tool, "-w", "-t", "nat", "-X", chain])
        if err:
            problems.append(err)
    if chains:
        _drop_empty_nat_table(family)
    return problems


def _drop_empty_nat_table(family: int) -> None:
    """iptables-nft created the ``nat`` table for us; with no rule left in it, its hooks would
    only keep conntrack busy in the root namespace, so it goes (it is made again on demand)."""
    saved = _saved_nat(family)
    if (
        saved is not None
        and not any(line.startswith("-A ") for line in saved)
        and shutil.which("nft")
    ):
        _try(["nft", "delete", "table", "ip" if family == 4 else "ip6", "nat"])


def _feed(argv: list[str], text: str) -> None:
    done = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SimNodeError(
            f"{' '.join(argv)} exited {done.returncode}: "
            f"{done.stderr.strip()}\n--- input ---\n{text}"
        )


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SimNodeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


def _try(argv: list[str]) -> str | None:
    try:
        _run(argv)
    except SimNodeError as exc:
        return str(exc)
    return None
