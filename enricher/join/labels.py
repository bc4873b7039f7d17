"""Which pod and node labels the enriched records carry, and the container they name.

Pod labels are chosen by glob (``app.kubernetes.io/*``, ``team``), node labels by glob too
(``topology.example.com/rack``); each end carries its selection as a map (flattened: the
OpenTelemetry attributes ``k8s.pod.label.<key>`` and ``k8s.node.label.<key>``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowscope.records.metadata import ContainerMeta, PodMeta

# The examples of OpenTelemetry's and Kubernetes' recommended labels: cheap, and what cost
# and latency are most often split by.
DEFAULT_POD_LABELS = ("app.kubernetes.io/*", "team", "version")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")  # OCI digest


@dataclass(frozen=True)
class LabelSelection:
    pod_globs: tuple[str, ...] = DEFAULT_POD_LABELS
    node_globs: tuple[str, ...] = ()

    @staticmethod
    def _pick(globs: tuple[str, ...], labels: Mapping[str, str]) -> dict[str, str] | None:
        if not globs or not labels:
            return None
        picked = {
            k: v for k, v in sorted(labels.items()) if any(fnmatch.fnmatchcase(k, g) for g in globs)
        }
        return picked or None

    def pod(self, labels: Mapping[str, str]) -> dict[str, str] | None:
        return self._pick(self.pod_globs, labels)

    def node(self, labels: Mapping[str, str]) -> dict[str, str] | None:
        return self._pick(self.node_globs, labels)


def parse_globs(text: str) -> tuple[str, ...]:
    """``"app.kubernetes.io/*, team"`` -> the globs, in order, without blanks or repeats."""
    return tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))


def split_image(ref: str) -> tuple[str, tuple[str, ...]]:
    """``registry:5000/team/app:1.2@sha256:...`` -> (``registry:5000/team/app``, (``1.2``,)).
    No tag and no digest means ``latest``, as the runtime pulls it."""
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        return name[:colon], (name[colon + 1 :],)
    return name, () if digest else ("latest",)


def image_digest(image_id: str | None) -> str | None:
    """The digest in a status.imageID (``repo@sha256:...``, or a bare ``sha256:...``)."""
    if not image_id:
        return None
    digest = image_id.rpartition("@")[2]
    return digest if _DIGEST.fullmatch(digest) else None


def named_container(pod: PodMeta) -> ContainerMeta | None:
    """The container an address of the pod names: the only app container, if it has one
    (with sidecars, the address does not say which container answered)."""
    return pod.containers[0] if len(pod.containers) == 1 else None


def container_fields(pod: PodMeta) -> dict[str, Any]:
    """Endpoint fields of the pod's container (see named_container); empty if none."""
    c = named_container(pod)
    if c is None:
        return {}
    name, tags = split_image(c.image)
    return {
        "container_name": c.name,
        "image_name": name or None,
        "image_tags": list(tags) or None,
        "image_id": image_digest(c.image_id),
    }
