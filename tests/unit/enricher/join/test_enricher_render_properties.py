"""Property: the C join loop (enricher/join/_render.c) renders what the reference renders
(enrich.enrich, then msgspec: Renderer.reference) for any raw record against any metadata:
pods, nodes and Services with hostile names, every outcome and role, IPv4 and IPv6 ends,
Service NAT, hostile process and container strings (quotes, backslashes, control
characters, very long), u64 volumes; and Outbox.add_rendered routes in C as its reference
(add_rendered_py) does."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from enricher_records import T0
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from enricher.join.classify import AddressClassifier, parse_cidrs
from enricher.join.outbox import Outbox
from enricher.join.render import NATIVE_BUILT, Rendered, Renderer
from enricher.join.state import MetadataState
from flowscope.records import Outcome, RawTcpConnection
from flowscope.records.metadata import Meta, NodeMeta, PodMeta, ServiceMeta

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSIFIER = AddressClassifier(
    parse_cidrs("10.0.0.0/16,10.96.0.0/12,fd00::/64", "c"), parse_cidrs("10.200.0.0/16", "o")
)
U64 = 2**64 - 1
S = 1_000_000_000

hostile = st.one_of(
    st.text(max_size=30),
    st.text(alphabet='"\\\x00\x01\x1f\x7f\u2028\u00e9\U0001f600ab', max_size=30),
)
very_long = st.text(alphabet='ab"\\\n', min_size=1000, max_size=3000)
names = st.one_of(st.sampled_from(["api", "web", "db"]), hostile, very_long)
UIDS = ["u1", "u2", "u3", "u4"]
NODES = ["n1", "n2", "n3"]
POD_IPS = ["10.0.1.1", "10.0.2.1", "10.0.3.1", "fd00::1", "fd00::2", "34.1.2.3", "192.168.1.2"]
NODE_IPS = ["192.168.1.1", "192.168.1.2", "35.1.1.1", "fd00::99"]
CLUSTER_IPS = ["10.96.0.10", "10.96.0.11", "fd00::a"]
# Also: unknown in-cluster, other cluster, private, internet (v4 and v6), odd spellings.
OTHER_IPS = [
    "10.0.9.9",
    "10.200.0.1",
    "172.16.0.1",
    "8.8.8.8",
    "1.2.3.4",
    "2606:4700::1111",
    "::ffff:10.0.2.1",
    "01.2.3.4",
    "not-an-address",
    "100.64.0.1",
]
ADDRESSES = POD_IPS + NODE_IPS + CLUSTER_IPS + OTHER_IPS
KINDS = ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"]


@st.composite
def metadata(draw: st.DrawFn) -> list[Meta]:
    out: list[Meta] = []
    for node in NODES:
        if draw(st.booleans()):
            out.append(
                NodeMeta(
                    name=node,
                    zone=draw(st.sampled_from(["z1", "z2", None])),
                    region=draw(st.sampled_from(["r1", "r2", None])),
                    addresses=draw(st.lists(st.sampled_from(NODE_IPS), max_size=2, unique=True)),
                )
            )
    # u1 and u2 always (the common case: pod to pod), each with an address of each family.
    extra = draw(st.lists(st.sampled_from(UIDS[2:]), unique=True))
    for uid in ["u1", "u2", *extra]:
        fixed = {"u1": ["10.0.1.1", "fd00::1"], "u2": ["10.0.2.1", "fd00::2"]}.get(uid)
        out.append(
            PodMeta(
                uid=uid,
                name=draw(names),
                namespace=draw(names),
                node=draw(st.sampled_from([*NODES, None, "n-unknown"])),
                ips=fixed or draw(st.lists(st.sampled_from(POD_IPS), max_size=2, unique=True)),
                host_network=fixed is None and draw(st.booleans()),
                start_time_ns=T0 + draw(st.sampled_from([0, 0, 0, 20 * S])),
                end_time_ns=draw(st.sampled_from([None, None, None, T0 + 15 * S])),
                workload_kind=draw(st.sampled_from(KINDS)),
                workload_name=draw(names),
            )
        )
    fixed_ips = ["10.96.0.10", "fd00::a"]  # one Service always
    for i in range(1 + draw(st.integers(0, 2))):
        out.append(
            ServiceMeta(
                name=draw(names),
                namespace=draw(names),
                cluster_ips=fixed_ips
                if i == 0
                else draw(st.lists(st.sampled_from(CLUSTER_IPS), max_size=2, unique=True)),
            )
        )
    return out


@st.composite
def raws(draw: st.DrawFn) -> RawTcpConnection:
    family = draw(st.sampled_from([4, 6]))
    nat = draw(st.sampled_from([None, None, *CLUSTER_IPS, "10.0.2.1"]))
    fields: dict[str, Any] = {
        "node": draw(st.one_of(st.sampled_from([*NODES, "node-z"]), hostile)),
        "start_time_ns": T0 + draw(st.integers(0, 30)) * S,
        "end_time_ns": draw(st.integers(0, U64)),
        "role": draw(st.sampled_from(["client", "server", "unknown"])),
        "family": family,
        "local_addr": draw(st.sampled_from(ADDRESSES)),
        "local_port": draw(st.integers(0, 65535)),
        "remote_addr": draw(
            st.sampled_from(POD_IPS[:5]) | st.sampled_from(CLUSTER_IPS) | st.sampled_from(ADDRESSES)
        ),
        "remote_port": draw(st.integers(0, 65535)),
        "pid": draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        "comm": draw(st.one_of(st.just(""), st.just("curl"), hostile, very_long)),
        "cgroup_id": draw(st.integers(0, U64)),
        "cgroup_path": draw(st.one_of(st.none(), hostile)),
        "pod_uid": draw(st.sampled_from(["u1", "u2"]) | st.sampled_from([*UIDS, None, "x"])),
        "container_id": draw(st.one_of(st.none(), st.just("c" * 64), hostile, very_long)),
        "bytes_sent": draw(st.integers(0, U64)),
        "bytes_received": draw(st.integers(0, U64)),
        "srtt_us": draw(st.integers(0, 2**32 - 1)),
        "retrans_segs": draw(st.integers(0, 2**32 - 1)),
        "connect_latency_us": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        "interim": draw(st.booleans()),
        "sequence": draw(st.integers(0, 2**32 - 1)),
        "outcome": draw(st.sampled_from(get_args(Outcome))),
        "syn_retries": draw(st.integers(0, 255)),
        "segs_out": draw(st.integers(0, 2**32 - 1)),
        "original_remote_addr": nat,
        "original_remote_port": None if nat is None else draw(st.integers(0, 65535)),
    }
    return RawTcpConnection(**fields)


def _reference(renderer: Renderer, raw: RawTcpConnection) -> Rendered | type[Exception]:
    try:
        return renderer.reference(raw)
    except Exception as exc:  # the C must fail alike
        return type(exc)


def _c(renderer: Renderer, raw: RawTcpConnection) -> Rendered | type[Exception]:
    try:
        return renderer.render(raw)
    except Exception as exc:
        return type(exc)


def _state(meta: list[Meta]) -> MetadataState:
    state = MetadataState(early_tolerance_ns=0)
    for m in meta:
        state.upsert(m, T0)
    return state


def test_the_c_loop_is_built() -> None:
    assert NATIVE_BUILT, (
        "enricher.join._render (enricher/join/_render.c) is not built: run `make native`"
    )


@PROPERTY
@given(metadata(), st.lists(raws(), min_size=1, max_size=12))
def test_c_loop_renders_the_reference_bytes(
    meta: list[Meta], records: list[RawTcpConnection]
) -> None:
    state = _state(meta)
    renderer = Renderer(state, CLASSIFIER)
    assert renderer.native
    for _round in range(2):  # the second time from what the first one cached
        wants = [_reference(renderer, raw) for raw in records]
        gots = [_c(renderer, raw) for raw in records]
        assert gots == wants
        if not any(isinstance(w, type) for w in wants):
            assert renderer.render_many(records) == wants  # the batch loop, too
    for want in wants:
        if isinstance(want, type):
            hypothesis_event(f"raises {want.__name__}")
        else:
            hypothesis_event(f"{want.local_attribution} -> {want.remote_attribution}")
            msgspec.json.decode(want.value)  # valid JSON, whatever the strings held


@PROPERTY
@given(
    metadata(),
    st.lists(raws(), min_size=1, max_size=30),
    st.integers(1, 8),
    st.sampled_from([1, 2, 3, 12]),
    st.integers(0, 2),
)
def test_c_routing_adds_what_the_reference_adds(
    meta: list[Meta],
    records: list[RawTcpConnection],
    max_records: int,
    partitions: int,
    version: int,
) -> None:
    state = _state(meta)
    renderer = Renderer(state, CLASSIFIER)
    outs: list[Rendered | None] = []
    kept: list[RawTcpConnection] = []
    for raw in records:
        out = _c(renderer, raw)
        if not isinstance(out, type):
            outs.append(out if raw.pid % 5 else None)  # None: nothing to add
            kept.append(raw)
    runs = []
    for native in (True, False):
        sent: list[tuple[str, bytes, str, int]] = []
        attended: list[bytes] = []

        def attend(raw: RawTcpConnection, out: Rendered, seen: list[bytes] = attended) -> bool:
            seen.append(out.value)
            return raw.sequence % 2 == 0

        outbox = Outbox(lambda *a, s=sent: s.append(a), "t", max_records, partitions)  # type: ignore[misc]
        added = outbox.add_rendered(list(outs), kept, version, attend, native)
        outbox.flush()
        runs.append((added, sent, attended, outbox.messages, outbox.records))
    assert runs[0] == runs[1]
