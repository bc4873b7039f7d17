from collections.abc import Callable, Sequence

EVENT_SIZE: int

class Encoder:
    def __init__(
        self,
        node_json: bytes,
        cgroup: Callable[[int], tuple[str, bytes]],
        comm: Callable[[bytes], bytes],
        fallback: Callable[[int], bytes],
        networks: Sequence[tuple[int, bytes, int]],
        batch_records: int,
        batch_bytes: int,
    ) -> None: ...
    def encode(
        self, data: bytes, spans: list[tuple[int, int]] | None, clock_offset: int
    ) -> tuple[list[tuple[str, bytes, int]], int, int, int, int]: ...
