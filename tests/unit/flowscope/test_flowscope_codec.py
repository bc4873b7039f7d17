from __future__ import annotations

import pytest

from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import DeadLetter, Endpoint

LETTER = DeadLetter(
    stage="enricher",
    reason="bad",
    source_topic="t",
    partition=0,
    offset=7,
    key=None,
    payload="{",
    time_ns=1,
)


def test_round_trip_single_and_batch() -> None:
    codec = JsonCodec(DeadLetter)
    assert codec.decode(codec.encode(LETTER)) == LETTER
    assert codec.decode_batch(codec.encode_batch([LETTER, LETTER])) == [LETTER, LETTER]
    # A consumer of batches also takes single-record messages.
    assert codec.decode_batch(codec.encode(LETTER)) == [LETTER]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "empty message"),
        (b"{not json", "not valid JSON"),
        (b'{"stage": 1}', "invalid field"),
        (b"[{}]", "invalid field"),
    ],
)
def test_bad_input_raises_decode_error_with_reason(data: bytes | None, message: str) -> None:
    codec = JsonCodec(DeadLetter)
    with pytest.raises(DecodeError, match=message):
        codec.decode_batch(data) if data and data.startswith(b"[") else codec.decode(data)


def test_endpoint_uses_opentelemetry_keys_and_workload_key() -> None:
    end = Endpoint(
        address="10.0.0.1",
        port=80,
        attribution="pod",
        pod_name="web-1",
        namespace="shop",
        workload_kind="Deployment",
        workload_name="web",
        zone="a",
    )
    encoded = JsonCodec(Endpoint).encode(end)
    assert b'"k8s.pod.name":"web-1"' in encoded and b'"cloud.availability_zone":"a"' in encoded
    assert end.workload_key() == "shop/Deployment/web"
    host = Endpoint(address="10.0.0.9", port=1, attribution="host", node="n1")
    assert host.workload_key() == "node/n1"
