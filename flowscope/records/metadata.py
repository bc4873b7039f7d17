"""The slim metadata schema carried by the compacted metadata topic.

Only what the join needs travels: no env, no pod spec beyond the node and host-network flag,
and no annotations but those the publisher is told to carry (``--publish-annotations``). Each
value is a JSON object tagged by ``kind`` and versioned by ``v`` so a newer publisher can be
detected (and its records skipped and counted) by an older joiner.

Keys are ``<Kind>/<namespace>/<name>`` (``Node/<name>`` for nodes); a null value (tombstone)
means the object was deleted.
"""

from __future__ import annotations

import msgspec

METADATA_VERSION = 1


class ContainerMeta(msgspec.Struct, frozen=True, kw_only=True):
    """One app container of a pod (spec.containers joined with its containerStatuses)."""

    name: str
    image: str  # as the spec says it: registry/repository:tag (or @digest)
    # status.imageID: what the runtime resolved the image to (a repo digest under
    # containerd, CRI-O and Docker); None until the container started.
    image_id: str | None = None


class PodMeta(msgspec.Struct, frozen=True, kw_only=True, tag="Pod", tag_field="kind"):
    v: int = METADATA_VERSION
    uid: str
    name: str
    namespace: str
    node: str | None
    ips: list[str]
    # hostNetwork pods share the node's IP: the IP names the node, not the pod.
    host_network: bool = False
    # The pod holds its IPs over [start_time_ns, end_time_ns); None means still running.
    start_time_ns: int
    end_time_ns: int | None = None
    workload_kind: str
    workload_name: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    # Services whose EndpointSlices list this pod as a backend (sorted). Added in the same
    # version: older records simply have none.
    services: list[str] = msgspec.field(default_factory=list)
    # Only the annotation keys the publisher was configured with (none by default): they can
    # hold anything, secrets included (e.g. last-applied-configuration). Same version: older
    # records have none.
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    # App containers in spec order (init and ephemeral containers are left out). Same
    # version: older records have none.
    containers: list[ContainerMeta] = msgspec.field(default_factory=list)

    def key(self) -> str:
        return pod_key(self.namespace, self.name)


class NodeMeta(msgspec.Struct, frozen=True, kw_only=True, tag="Node", tag_field="kind"):
    v: int = METADATA_VERSION
    name: str
    zone: str | None
    region: str | None
    addresses: list[str]
    # The node's labels (a rack, a host group, an instance type...): the joiner puts those it
    # is told to on records. Same version: older records have none.
    labels: dict[str, str] = msgspec.field(default_factory=dict)

    def key(self) -> str:
        return node_key(self.name)


class ServicePort(msgspec.Struct, frozen=True, kw_only=True):
    port: int
    protocol: str = "TCP"


class ServiceMeta(msgspec.Struct, frozen=True, kw_only=True, tag="Service", tag_field="kind"):
    v: int = METADATA_VERSION
    name: str
    namespace: str
    cluster_ips: list[str]
    ports: list[ServicePort] = msgspec.field(default_factory=list)

    def key(self) -> str:
        return service_key(self.namespace, self.name)


Meta = PodMeta | NodeMeta | ServiceMeta


def pod_key(namespace: str, name: str) -> str:
    return f"Pod/{namespace}/{name}"


def node_key(name: str) -> str:
    return f"Node/{name}"


def service_key(namespace: str, name: str) -> str:
    return f"Service/{namespace}/{name}"


class MetaCodec:
    """Encoder/decoder for metadata values, built once and reused."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[Meta] = msgspec.json.Decoder(Meta)

    def encode(self, meta: Meta) -> bytes:
        return self._encoder.encode(meta)

    def decode(self, data: bytes) -> Meta:
        """Raises msgspec.DecodeError / msgspec.ValidationError on a malformed value."""
        return self._decoder.decode(data)
