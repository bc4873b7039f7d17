"""``python -m simnode.traffic server|client``: see the package docstring."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from simnode.traffic.client import ClientSettings, run_client
from simnode.traffic.server import Server, ServerSettings


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simnode.traffic", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server", help="accept request/reply connections")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=_port, required=True)
    s.add_argument(
        "--reply-bytes",
        type=_non_negative,
        required=True,
        help="bytes sent back on every connection",
    )
    s.add_argument(
        "--request-bytes",
        type=_non_negative,
        default=None,
        help="reply once this many bytes arrived (default: when the client half-closes)",
    )
    s.add_argument(
        "--max-connections",
        type=_positive,
        default=None,
        help="exit after serving this many connections (default: never)",
    )
    c = sub.add_parser("client", help="make sequential request/reply connections")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=_port, required=True)
    c.add_argument("--count", type=_positive, required=True, help="connections to make")
    c.add_argument(
        "--send-bytes", type=_non_negative, required=True, help="bytes sent on every connection"
    )
    c.add_argument(
        "--expect-reply-bytes",
        type=_non_negative,
        default=None,
        help="count a connection as failed unless its reply has this size",
    )
    c.add_argument(
        "--interval-ms", type=_non_negative, default=0, help="pause between connections (default 0)"
    )
    c.add_argument(
        "--timeout-s",
        type=float,
        default=30.0,
        help="connect/read timeout per connection (default 30)",
    )
    c.add_argument(
        "--source", default=None, help="source address to bind (default: the kernel's choice)"
    )
    return p


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.mode == "server":
        server = Server(
            ServerSettings(
                bind=args.bind,
                port=args.port,
                reply_bytes=args.reply_bytes,
                request_bytes=args.request_bytes,
                max_connections=args.max_connections,
            )
        )
        print(f'{{"listening":{args.port}}}', flush=True)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            server.serve()
        except (SystemExit, KeyboardInterrupt):
            pass
        finally:
            print(server.summary.to_json(), flush=True)
        return 0
    summary = run_client(
        ClientSettings(
            host=args.host,
            port=args.port,
            count=args.count,
            send_bytes=args.send_bytes,
            expect_reply_bytes=args.expect_reply_bytes,
            interval_s=args.interval_ms / 1000,
            timeout_s=args.timeout_s,
            source=args.source,
        )
    )
    print(summary.to_json(), flush=True)
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
