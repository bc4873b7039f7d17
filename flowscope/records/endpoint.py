"""One end of a connection or query after enrichment (TCP and DNS share it)."""

from __future__ import annotations

import msgspec

from flowscope.records.vocabulary import Attribution


# gc=False: see transport.py.
class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One end of a connection after enrichment. Keys follow OpenTelemetry where one exists."""

    address: str
    port: int
    attribution: Attribution = msgspec.field(name="flowscope.attribution")
    pod_name: str | None = msgspec.field(name="k8s.pod.name", default=None)
    pod_uid: str | None = msgspec.field(name="k8s.pod.uid", default=None)
    namespace: str | None = msgspec.field(name="k8s.namespace.name", default=None)
    workload_kind: str | None = msgspec.field(name="flowscope.workload.kind", default=None)
    workload_name: str | None = msgspec.field(name="flowscope.workload.name", default=None)
    deployment: str | None = msgspec.field(name="k8s.deployment.name", default=None)
    statefulset: str | None = msgspec.field(name="k8s.statefulset.name", default=None)
    daemonset: str | None = msgspec.field(name="k8s.daemonset.name", default=None)
    job: str | None = msgspec.field(name="k8s.job.name", default=None)
    cronjob: str | None = msgspec.field(name="k8s.cronjob.name", default=None)
    service: str | None = msgspec.field(name="k8s.service.name", default=None)
    node: str | None = msgspec.field(name="k8s.node.name", default=None)
    zone: str | None = msgspec.field(name="cloud.availability_zone", default=None)
    region: str | None = msgspec.field(name="cloud.region", default=None)
    # The pod's container (when the pod has one app container, so the address names it)
    # and its image: name without tag, tags, and the digest the runtime resolved it to.
    container_name: str | None = msgspec.field(name="k8s.container.name", default=None)
    image_name: str | None = msgspec.field(name="container.image.name", default=None)
    image_tags: list[str] | None = msgspec.field(name="container.image.tags", default=None)
    image_id: str | None = msgspec.field(name="container.image.id", default=None)
    # The pod's and its node's labels the enricher was told to carry, by key: flattened, the
    # OpenTelemetry attributes k8s.pod.label.<key> and k8s.node.label.<key>.
    pod_labels: dict[str, str] | None = msgspec.field(name="k8s.pod.label", default=None)
    node_labels: dict[str, str] | None = msgspec.field(name="k8s.node.label", default=None)
    # (container_id, pid and command stay last: the enricher's fast path writes them after
    # the fields above, which it encodes once per pod.)
    container_id: str | None = msgspec.field(name="container.id", default=None)
    pid: int | None = msgspec.field(name="process.pid", default=None)
    command: str | None = msgspec.field(name="process.command", default=None)

    def workload_key(self) -> str:
        """A stable grouping key: ``namespace/kind/name``, or the attribution for non-pods."""
        if self.workload_name is not None:
            return f"{self.namespace}/{self.workload_kind}/{self.workload_name}"
        if self.attribution in ("host", "node") and self.node is not None:
            return f"node/{self.node}"
        return f"{self.attribution}/{self.address}"
