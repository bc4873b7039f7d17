"""The join's hot path: raw record -> enriched JSON bytes, without building the structs.

Two tiers. The reference, :meth:`Renderer.reference`: :func:`enricher.join.enrich.enrich` builds
an :class:`EnrichedTcpConnection` (two 20-field Endpoints and a 16-field record) that is then
encoded, about 10 µs per record. The C loop (``enricher/join/_render.c``, ``make native``) encodes
the named part of each end (everything but address, port and process) once per pod, node or
service through this module (:class:`Fragment`), keeps it, and writes a record around those
fragments; it calls back here for everything but the common case.

The C output is byte for byte what the reference gives (the unit and property tests compare
the two), so the wire schema has one definition. Where the extension is not built, or
:func:`self_check` finds at start that it no longer matches the record types, the renderer
runs the reference (slower, never wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Annotated, NamedTuple, get_args, get_origin

import msgspec
from msgspec.structs import replace

from enricher.join.classify import AddressClassifier
from enricher.join.dnsnames import DnsNames
from enricher.join.enrich import (
    _OBSERVED,
    COPIED_FIELDS,
    EXTERNAL,
    UNRESOLVED,
    dialed_service,
    enrich,
    local_template,
    missing_key,
    pod_template,
    server_domain,
    template_of,
)
from enricher.join.index import MetadataIndex, canonical_ip
from flowscope.locality import zone_class
from flowscope.records import Endpoint, EnrichedTcpConnection, PeerClass, RawTcpConnection
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta

_HEAD = b'{"address":"","port":0,'

_ENCODE_NAMES = {f.name: f.encode_name for f in msgspec.structs.fields(EnrichedTcpConnection)}
# The fields copied from the raw record (enrich.COPIED_FIELDS) that the C loop knows, written
# inside its one formatting call. Should the copied fields change, self_check says so at start
# and the renderer takes the reference path (slower, never wrong) until the C follows.
_FAST_COPIED = ("outcome", "interim", "sequence", "segs_out", "syn_retries")


def _bare(type_: object) -> object:
    """A field's type without its schema annotation (``Annotated[Outcome, Meta(...)]``)."""
    return get_args(type_)[0] if get_origin(type_) is Annotated else type_


_RAW_TYPES = {f.name: _bare(f.type) for f in msgspec.structs.fields(RawTcpConnection)}
_COPIED_FAST = (
    COPIED_FIELDS == _FAST_COPIED
    and _RAW_TYPES["interim"] is bool
    and _RAW_TYPES["sequence"] is int
    and _RAW_TYPES["segs_out"] is int
    and _RAW_TYPES["syn_retries"] is int
    and all(isinstance(v, str) and v.isidentifier() for v in get_args(_RAW_TYPES["outcome"]))
)
_UNNAMED = frozenset(("external", "unresolved"))
_DOMAIN_KEY = b',"%s":' % _ENCODE_NAMES["server_domain"].encode()


class Fragment(NamedTuple):
    """One end's template, its encoded fields after ``port``, and its grouping key if that
    does not depend on the address; for the peer class, whether the end is unnamed (then its
    address is classified) and else its (region, zone)."""

    template: Endpoint
    body: bytes
    key: str | None
    unnamed: bool
    where: tuple[str | None, str | None]  # shared by every end in the same zone
    # The template's attribution again: the render reads only this tuple, not the template
    # (one object less to fetch from memory per end; with 10,000 pods that shows).
    attribution: str


class Rendered(NamedTuple):
    value: bytes
    key: str  # the client's workload key: the Kafka key, so a pair's records share a partition
    # How each end was named (pod, node, host, service, external, unresolved): the join's
    # counters read them. Strings, not the ends' templates: touching one more object per end
    # costs a cache miss per record with a large cluster's metadata.
    local_attribution: str
    remote_attribution: str
    missing: str | None  # what the record still waits for (see enrich.missing_key)
    plain: bool  # the common case: a named local end and a pod as the remote end


# Addresses shortcut for any time (see Renderer._remember_address), and how many at most.
_EVER = (-(2**63), 2**63)
_ADDRESS_LIMIT = 65536


def _load_native() -> ModuleType | None:
    """The C loop (enricher/join/_render.c), configured for this module's record layout; None where
    it was not built or does not know the copied fields (then the reference runs)."""
    try:
        from enricher.join import _render
    except ImportError:
        return None
    if not _COPIED_FAST:
        return None
    keys = tuple(b',"%s":' % _ENCODE_NAMES[n].encode() for n in _FAST_COPIED)
    _render.configure(Rendered, RawTcpConnection, _OBSERVED, msgspec.json.Encoder().encode, keys)
    return _render


_native = NATIVE = _load_native()  # the configured C module, None where not built
NATIVE_BUILT = _native is not None
_WHERE: dict[tuple[str | None, str | None], tuple[str | None, str | None]] = {}
_ADDRESS_PEER = {c: c.encode() for c in get_args(PeerClass)}
# (local (region, zone), remote (region, zone)) -> peer class: few distinct pairs (zones).
_LOCALITY: dict[tuple[tuple[str | None, str | None], tuple[str | None, str | None]], bytes] = {}


def _locality(local: tuple[str | None, str | None], remote: tuple[str | None, str | None]) -> bytes:
    """The peer class of two named ends from their (region, zone), cached as JSON bytes."""
    found = _LOCALITY.get((local, remote))
    if found is None:
        if len(_LOCALITY) >= 4096:
            _LOCALITY.clear()  # zones are few; this only guards against odd metadata
        found = _LOCALITY[(local, remote)] = zone_class(*local, *remote).encode()
    return found


class Renderer:
    def __init__(
        self,
        state: MetadataIndex,
        classifier: AddressClassifier,
        native: bool = True,
        names: DnsNames | None = None,
    ) -> None:
        self.state = state
        self.classifier = classifier
        self.names = names  # DNS names of servers outside the metadata (enricher/join/dnsnames.py)
        # The C loop when it was built; the reference if told so (or if self_check fails).
        self.native = native and _native is not None
        self._enc = msgspec.json.Encoder()
        # The module's constant templates (external, unresolved), which live forever.
        self._const = {id(t): self._encode(t) for t in (EXTERNAL, UNRESOLVED)}
        self._nat: dict[tuple[int, str, str], tuple[Endpoint, Fragment]] = {}
        self._addresses: list[str] = []  # the shortcuts of addresses no pod held
        # Unnamed remote address -> (peer class, what it waits for) (see _finish).
        self._unnamed: dict[str, tuple[bytes, str | None]] = {}
        self._reference_enc = msgspec.json.Encoder()
        # What the C loop needs to name an internet peer nobody in the cluster has without
        # calling _remote: ~7 µs less per new address (a public service's clients, egress to
        # many hosts), and no cache entry per address.
        self._internet = (
            *state.address_tables(),
            classifier.not_internet_v4(),
            self._const[id(EXTERNAL)],
            _ADDRESS_PEER["internet"],
        )

    def reference(self, raw: RawTcpConnection) -> Rendered:
        """The same result through :func:`enrich` and the codec: the definition of correct."""
        out = enrich(raw, self.state, self.classifier, self.names)
        local, remote = (
            (out.server, out.client) if raw.role == "server" else (out.client, out.server)
        )
        return Rendered(
            self._reference_enc.encode(out),
            out.client.workload_key(),
            local.attribution,
            remote.attribution,
            missing_key(raw, out, self.classifier),
            remote.attribution == "pod" and local.attribution != "unresolved",
        )

    def _encode(self, template: Endpoint) -> Fragment:
        encoded = self._enc.encode(template)
        assert encoded.startswith(_HEAD) and encoded.endswith(b"}"), encoded
        key: str | None = None
        if template.workload_name is not None or (
            template.attribution in ("host", "node") and template.node is not None
        ):
            key = template.workload_key()
        unnamed = template.workload_kind is None and template.attribution in (
            "unresolved",
            "external",
        )
        where = (template.region, template.zone)
        where = _WHERE.setdefault(where, where)
        return Fragment(
            template, encoded[len(_HEAD) : -1], key, unnamed, where, template.attribution
        )

    def _fragment(self, template: Endpoint) -> Fragment:
        const = self._const.get(id(template))
        if const is not None:
            return const
        key = _template_key(template)
        if key is None:  # built for this record only (a pod uid without metadata)
            return self._encode(template)
        frags = self.state.fragments
        found = frags.get(key)
        if isinstance(found, Fragment) and found.template is template:
            return found
        frag = self._encode(template)
        # Cached under the index's key for the same template, so the index drops both at once.
        if self.state.templates.get(key) is template:
            frags[key] = frag
        return frag

    def _remember_address(self, addr: str, frag: Fragment) -> None:
        """Shortcut an address no pod ever held: it names this node, Service or nobody at any
        time until the index changes (which drops the shortcut). Unknown addresses are
        unbounded in number (the internet): at most ``_ADDRESS_LIMIT`` are kept."""
        if len(self._addresses) >= _ADDRESS_LIMIT:
            ip_frags = self.state.ip_fragments
            for old in self._addresses:
                ip_frags.pop(old, None)
            self._addresses.clear()
        self.state.ip_fragments[addr] = (_EVER[0], _EVER[1], frag)
        self._addresses.append(addr)

    def _with_service(self, remote: Fragment, raw: RawTcpConnection) -> Fragment:
        """The backend's fragment plus the Service the client dialed (Service NAT)."""
        svc = dialed_service(raw, self.state)
        if svc is None or remote.template.service == svc.name:
            return remote
        key = (id(remote.template), svc.namespace, svc.name)
        cached = self._nat.get(key)
        # Valid while the backend's template is the same object (the entry keeps it alive,
        # so its id cannot be reused meanwhile).
        if cached is not None and cached[0] is remote.template:
            return cached[1]
        if len(self._nat) >= 65536:
            self._nat.clear()
        frag = self._encode(replace(remote.template, service=svc.name))
        self._nat[key] = (remote.template, frag)
        return frag

    def _remote(self, addr: str, t: int) -> Fragment:
        """The remote end's fragment through the index (and the shortcut filled for next time)."""
        state = self.state
        found = state.lookup(addr, t)
        if found.__class__ is not PodMeta:
            frag = self._fragment(template_of(found, addr, state, self.classifier))
            if ":" not in addr and not state.ever_held_by_pod(addr):
                self._remember_address(addr, frag)
                if frag.unnamed:
                    self._unnamed_answers(addr, frag)  # so the C loop needs no _finish
            return frag
        uid = found.uid
        cached = state.fragments.get(uid)
        pod_frag = (
            cached if isinstance(cached, Fragment) else self._fragment(pod_template(found, state))
        )
        # Only the index's own fragment (dropped with the pod) and a canonical spelling
        # (IPv4: the index drops the shortcut under the canonical address).
        if ":" not in addr and state.fragments.get(uid) is pod_frag:
            span = state.sole_holder_span(addr)
            if span is not None:
                state.ip_fragments[addr] = (span[0], span[1], pod_frag)
        return pod_frag

    def render(self, raw: RawTcpConnection) -> Rendered:
        return self.render_many((raw,))[0]

    def render_many(self, raws: Sequence[RawTcpConnection]) -> list[Rendered]:
        """Every record of a batch: in C where it is built (``make native``), else through
        the reference; the two give the same bytes (the unit and property tests and
        :func:`self_check` compare them)."""
        if _native is None or not self.native:
            return [self.reference(raw) for raw in raws]
        state = self.state
        rendered: list[Rendered] = _native.render_batch(
            raws,
            state.fragments,
            state.ip_fragments,
            _LOCALITY,
            self._unnamed,
            self,
            self._internet,
        )
        if self.names is not None:
            self._add_domains(raws, rendered)
        return rendered

    def _add_domains(self, raws: Sequence[RawTcpConnection], rendered: list[Rendered]) -> None:
        """Append ``server.address`` to records whose server nobody in the metadata holds:
        the last field of the record, so the bytes stay what the reference encodes."""
        lookup, enc = self.state.lookup, self._enc
        for i, out in enumerate(rendered):
            if out.remote_attribution not in _UNNAMED:
                continue
            raw = raws[i]
            if lookup(raw.remote_addr, raw.start_time_ns) is not None:
                continue  # a Service's ClusterIP the collector could not translate
            name = server_domain(raw, self.names)
            if name is not None:
                value = out.value[:-1] + _DOMAIN_KEY + enc.encode(name) + b"}"
                rendered[i] = out._replace(value=value)

    # The C loop's ways back into Python, for everything but the common case.
    def _local_of(self, raw: RawTcpConnection) -> Fragment:
        return self._fragment(local_template(raw, self.state))

    def _finish(
        self, raw: RawTcpConnection, local: Fragment, remote: Fragment
    ) -> tuple[bytes, str | None]:
        """The peer class and what the record still waits for (the C loop asks only when its
        caches do not answer)."""
        addr = raw.remote_addr
        if local.attribution == "unresolved":
            peer = (
                self._unnamed_answers(addr, remote)[0]
                if remote.unnamed
                else _locality(local.where, remote.where)
            )
            if raw.pod_uid is not None:
                return peer, "uid:" + raw.pod_uid
            return peer, self._unnamed_answers(addr, remote)[1] if remote.unnamed else None
        if remote.unnamed:
            return self._unnamed_answers(addr, remote)
        return _locality(local.where, remote.where), None

    def _unnamed_answers(self, addr: str, remote: Fragment) -> tuple[bytes, str | None]:
        """For an unnamed remote end: its peer class, and what a record with a named local
        end waits for. Both depend on the address alone (its classes do not change while we
        run): kept where the C loop looks first."""
        found = self._unnamed.get(addr)
        if found is not None:
            return found
        classifier = self.classifier
        cls = classifier.classify(addr)
        missing = (
            "ip:" + canonical_ip(addr)
            if remote.attribution == "unresolved" and classifier.holds_back(cls)
            else None
        )
        if len(self._unnamed) >= _ADDRESS_LIMIT:
            self._unnamed.clear()
        found = self._unnamed[addr] = (_ADDRESS_PEER[classifier.peer_class(cls)], missing)
        return found


def _template_key(template: Endpoint) -> str | None:
    """The index's cache key for ``template`` (see enrich.py), None if it is not cached."""
    if template.attribution == "pod":
        return template.pod_uid
    if template.attribution == "node":
        return "node\0" + (template.node or "")
    if template.attribution == "host":
        return "host\0" + (template.node or "")
    if template.workload_kind == "Service":
        return f"svc\0{template.namespace}\0{template.workload_name}"
    return None


def self_check() -> str | None:
    """Render sample records both ways (the C loop and the reference) on a scratch index;
    say how they differ, if they do."""
    from enricher.join.state import MetadataState  # here: state imports nothing from render

    if not _COPIED_FAST:
        return (
            f"the copied fields are {COPIED_FIELDS}; the C loop knows {_FAST_COPIED} "
            "(and their types)"
        )
    if _native is None:
        return "enricher.join._render is not built (`make native`)"

    st = MetadataState(early_tolerance_ns=0)
    t0 = 1_700_000_000_000_000_000
    st.upsert(NodeMeta(name="n1", zone="z1", region="r", addresses=["192.168.0.1"]), t0)
    st.upsert(NodeMeta(name="n2", zone="z2", region="r", addresses=["192.168.0.2"]), t0)
    for uid, ip, node in (("a", "10.0.0.1", "n1"), ("b", "10.0.0.2", "n2")):
        st.upsert(
            PodMeta(
                uid=uid,
                name=f"p-{uid}",
                namespace="ns",
                node=node,
                ips=[ip],
                start_time_ns=t0,
                workload_kind="Deployment",
                workload_name=f"w-{uid}",
            ),
            t0,
        )
    st.upsert(ServiceMeta(name="s", namespace="ns", cluster_ips=["10.96.0.1"]), t0)
    renderer = Renderer(st, AddressClassifier())
    for role in ("client", "server"):
        for remote, nat in (("10.0.0.2", None), ("10.0.0.2", "10.96.0.1"), ("8.8.8.8", None)):
            raw = RawTcpConnection(
                node="n1",
                start_time_ns=t0 + 1,
                end_time_ns=t0 + 2,
                role=role,
                family=4,
                local_addr="10.0.0.1",
                local_port=1,
                remote_addr=remote,
                remote_port=2,
                pid=3,
                comm="c",
                cgroup_id=4,
                cgroup_path=None,
                pod_uid="a",
                container_id="x",
                bytes_sent=5,
                bytes_received=6,
                srtt_us=7,
                retrans_segs=8,
                connect_latency_us=9,
                original_remote_addr=nat,
            )
            fast, ref = renderer.render(raw), renderer.reference(raw)
            if fast.value != ref.value or fast.key != ref.key:
                return f"the C loop renders {fast.value!r}, the reference {ref.value!r}"
            try:
                msgspec.json.decode(fast.value, type=EnrichedTcpConnection)
            except msgspec.ValidationError as exc:
                return f"the C loop's output is not a valid EnrichedTcpConnection: {exc}"
    return None
