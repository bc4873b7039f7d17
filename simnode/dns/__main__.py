"""``python -m simnode.dns server|resolve|query|load``: see simnode.dns.server/client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from simnode.dns import client, server


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simnode.dns")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server", help="answer per name as --rules say")
    s.add_argument("--rules", default="{}", help="JSON rules (see simnode.dns.server)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=53)
    r = sub.add_parser("resolve", help="getaddrinfo per name (the system resolver)")
    r.add_argument("--family", choices=sorted(client.FAMILIES), default="inet")
    r.add_argument("names", nargs="+")
    q = sub.add_parser("query", help="one raw query per name to --server")
    q.add_argument("--server", required=True)
    q.add_argument("--type", default="A", choices=sorted(client.TYPES))
    q.add_argument("--tcp", action="store_true")
    q.add_argument("--timeout-s", type=float, default=2.0)
    q.add_argument("names", nargs="+")
    ld = sub.add_parser("load", help="many queries from one UDP socket")
    ld.add_argument("--server", required=True)
    ld.add_argument("--count", type=int, required=True)
    ld.add_argument("--window", type=int, default=32)
    ld.add_argument("--timeout-s", type=float, default=2.0)
    ld.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "server":
        return server.main(args.rules, args.host, args.port)
    if args.cmd == "resolve":
        return client.main_resolve(args.names, args.family)
    if args.cmd == "query":
        results = client.query(args.server, args.names, args.type, args.tcp, args.timeout_s)
        print(json.dumps(results), flush=True)
        return 0
    summary = client.load(args.server, args.names, args.count, args.window, args.timeout_s)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
