from collections.abc import Callable

EVENT_SIZE: int

class Engine:
    def __init__(
        self,
        timeout_ns: int,
        max_pending: int,
        node_json: bytes,
        label_json: bytes,
        cgroup: Callable[[int], tuple[str, bytes]],
        mark: Callable[[int, int, str, int], tuple[bool | None, str | None]] | None,
        settle: Callable[
            [int, int, str, int | None, int, bool | None, str | None, int, tuple[str, bytes]],
            bool,
        ]
        | None,
        privacy: Callable[[str], str | None] | None,
        backend: Callable[[int, int, str, int, str, int], tuple[str, int] | None] | None,
        v6_text: Callable[[bytes], str],
    ) -> None: ...
    def process(
        self, data: bytes, spans: list[tuple[int, int]] | None, offset_ns: int
    ) -> list[tuple[str, bytes]]: ...
    def expire(self, now_mono_ns: int) -> list[tuple[str, bytes]]: ...
    def counters(self) -> dict[str, int | dict[str, int]]: ...
    def add_discarded(self, count: int) -> None: ...
    def __len__(self) -> int: ...

def parse(
    data: bytes, clipped: bool
) -> tuple[
    str | None,
    tuple[int, int, int, int, int, int] | None,
    tuple[str, int, int] | None,
    int,
    tuple[tuple[int, int], ...],
    bool,
]: ...
