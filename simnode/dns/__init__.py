"""DNS on the simulated node: a server pod answering per name, clients, pod resolv.conf.

Example::

    with Cluster() as cluster:
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        server = DnsServerProcess(dns, {"names": {"web.default.svc.cluster.local":
                                                  {"addrs": ["10.96.0.20"]},
                                                  "slow.test": {"delay_ms": 300, "addrs": []},
                                                  "silent.test": {"drop": True}}})
        client = cluster.add_pod("app", node="node-b1")
        conf = PodResolvConf(client, render([dns.ip], kubernetes_search("default"), ndots=5))
        out = client.run(conf.command(Pod.python("simnode.dns", "resolve", "web")))
        stub = client.run(Pod.python("simnode.dns", "query", "--server", dns.ip, "slow.test"))
        received = server.stop()  # {"name TYPE": count}

``python -m simnode.dns server|resolve|query|load`` runs the pieces (see ``client``,
``server``). Needs root, iproute2 and util-linux (unshare, nsenter).
"""

from __future__ import annotations

from simnode.dns.process import DnsServerProcess
from simnode.dns.resolvconf import PodResolvConf, kubernetes_search, render

__all__ = ["DnsServerProcess", "PodResolvConf", "kubernetes_search", "render"]
