"""JSON codecs for every record type. msgspec validates while it decodes, so a malformed
record raises :class:`DecodeError` with a message that can go straight into a dead letter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")


class DecodeError(ValueError):
    """A record's bytes are not a valid instance of the expected type."""


class JsonCodec(Generic[T]):
    """Encode/decode one record type. Encoders and decoders are built once: they are reused
    per record because construction costs far more than a call."""

    def __init__(self, type_: type[T]) -> None:
        self._type = type_
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(type_)
        self._batch_decoder = msgspec.json.Decoder(list[type_])  # type: ignore[valid-type]

    def encode(self, record: T) -> bytes:
        return self._encoder.encode(record)

    def decode(self, data: bytes | None) -> T:
        if data is None:
            raise DecodeError(f"{self._type.__name__}: empty message (null value)")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"{self._type.__name__}: invalid field: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise DecodeError(f"{self._type.__name__}: not valid JSON: {exc}") from exc

    def encode_batch(self, records: Sequence[T]) -> bytes:
        """Many records in one Kafka message (a JSON array). Per-message costs dominate in
        Kafka clients and Faust, so high-rate stages batch; consumers accept both forms."""
        return self._encoder.encode(list(records))

    def decode_batch(self, data: bytes | None) -> list[T]:
        """A message holding one record (a JSON object) or a batch (a JSON array)."""
        if data is None:
            raise DecodeError(f"{self._type.__name__}: empty message (null value)")
        if data[:1] != b"[":
            return [self.decode(data)]
        try:
            return self._batch_decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"{self._type.__name__} batch: invalid field: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise DecodeError(f"{self._type.__name__} batch: not valid JSON: {exc}") from exc
