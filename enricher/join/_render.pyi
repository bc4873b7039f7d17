"""Types of the C render loop (enricher/join/_render.c).

render.py drives it; enrich.py is its spec.
"""

from collections.abc import Callable, Sequence
from typing import Any

def configure(
    rendered: type[tuple[Any, ...]],
    raw: type,
    observed: frozenset[str],
    encode: Callable[[Any], bytes],
    copied_keys: tuple[bytes, ...],
) -> bool: ...
def render_batch(
    raws: Sequence[Any],
    fragments: dict[str, Any],
    ip_fragments: dict[str, tuple[int, int, Any]],
    locality: dict[Any, bytes],
    unnamed: dict[str, tuple[bytes, str | None]],
    renderer: Any,
    internet: tuple[object, ...] | None,
) -> list[Any]: ...
