"""What a pod's metadata carries beyond the join's needs: labels (on unless turned off) and
only the annotation keys configured (none by default), from both sources (file and watch)."""

from __future__ import annotations

from typing import Any

import pytest
from test_enricher_cluster import decoded, pod

from enricher.__main__ import build_parser, settings_from_args
from enricher.publish.cluster import ClusterModel, slim
from enricher.publish.kubeobjects import PodFields, parse_text
from flowscope.records.metadata import PodMeta

FILE = """
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: u-1
  labels: {app: web}
  annotations:
    example.com/team: payments
    kubectl.kubernetes.io/last-applied-configuration: '{"data": {"password": "hunter2"}}'
spec: {nodeName: n1}
status: {podIP: 10.0.0.5, startTime: "2026-01-01T00:00:00Z"}
"""
TEAM = "example.com/team"


def _file_pod(fields: PodFields | None = None) -> PodMeta:
    parsed = parse_text(FILE) if fields is None else parse_text(FILE, fields)
    (meta,) = parsed.metas
    assert isinstance(meta, PodMeta)
    return meta


def _watched(fields: PodFields, obj: dict[str, Any]) -> PodMeta:
    out = decoded(ClusterModel(fields).event("Pod", "ADDED", obj))
    meta = out["Pod/ns/a"]
    assert isinstance(meta, PodMeta)
    return meta


def test_no_annotation_travels_by_default_from_either_source() -> None:
    assert _file_pod().annotations == {}
    assert "hunter2" not in repr(_file_pod())
    obj = pod("a", "u1", "10.0.0.1", annotations={TEAM: "payments", "secret": "x"})
    assert _watched(PodFields(), obj).annotations == {}
    assert "annotations" not in slim("Pod", obj)["metadata"]


def test_only_the_configured_annotation_keys_travel() -> None:
    fields = PodFields(annotations=frozenset({TEAM, "absent.io/key"}))
    meta = _file_pod(fields)
    assert meta.annotations == {TEAM: "payments"}
    assert "hunter2" not in repr(meta)
    obj = pod("a", "u1", "10.0.0.1", annotations={TEAM: "payments", "secret": "x"})
    # The watch cache keeps the chosen keys only, and the published record carries them.
    assert slim("Pod", obj, fields)["metadata"]["annotations"] == {TEAM: "payments"}
    assert _watched(fields, obj).annotations == {TEAM: "payments"}


def test_labels_off_holds_for_the_file_source_too() -> None:
    assert _file_pod().labels == {"app": "web"}
    assert _file_pod(PodFields(labels=False)).labels == {}


def test_annotation_keys_from_the_environment_and_the_command_line() -> None:
    env = {"FLOWSCOPE_PUBLISH_ANNOTATIONS": f"{TEAM}, owner"}
    settings = settings_from_args(build_parser(env).parse_args(["publish"]))
    assert settings.pod_fields == PodFields(annotations=frozenset({TEAM, "owner"}))
    args = build_parser({}).parse_args(["publish", "--publish-annotations", "a.io/x,b"])
    assert settings_from_args(args).publish_annotations == frozenset({"a.io/x", "b"})
    assert settings_from_args(build_parser({}).parse_args(["publish"])).publish_annotations == (
        frozenset()
    )


@pytest.mark.parametrize("bad", ["a.io/*", "-lead", "Upper.io/x", "x" * 64, "a/b/c"])
def test_an_invalid_annotation_key_fails_at_start(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["publish", f"--publish-annotations={bad}"])
    assert f"{bad!r} is not an annotation key" in capsys.readouterr().err
