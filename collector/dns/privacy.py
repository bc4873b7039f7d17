"""What leaves the node of a query name: the name, a keyed hash of it, or nothing.

Names can be personal data (``alice-laptop.corp``, tracking subdomains). ``hash`` keeps
names countable and joinable (the same name gives the same hash on every node with the
same key) without publishing them; with a secret key the hashes cannot be reversed by
hashing a dictionary of likely names. ``drop`` removes them.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

NamePolicy = Literal["plain", "hash", "drop"]
NAME_POLICIES: Final = ("plain", "hash", "drop")
PRIVACY_LABELS: Final[dict[str, Literal["plain", "hashed", "dropped"]]] = {
    "plain": "plain",
    "hash": "hashed",
    "drop": "dropped",
}


class NamePrivacy:
    def __init__(self, policy: NamePolicy = "plain", key: bytes = b"") -> None:
        if policy not in NAME_POLICIES:
            raise ValueError(f"name policy {policy!r}; valid: {', '.join(NAME_POLICIES)}")
        if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError(f"hash key longer than {hashlib.blake2b.MAX_KEY_SIZE} bytes")
        self.policy: NamePolicy = policy
        self.label = PRIVACY_LABELS[policy]
        self._key = key
        self._cache: dict[str, str] = {}

    def apply(self, name: str | None) -> str | None:
        if name is None or self.policy == "plain":
            return name
        if self.policy == "drop":
            return None
        # Case-insensitive like DNS itself: 0x20-randomised spellings hash alike.
        lowered = name.lower()
        cached = self._cache.get(lowered)
        if cached is None:
            digest = hashlib.blake2b(lowered.encode(), digest_size=16, key=self._key)
            cached = digest.hexdigest()
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[lowered] = cached
        return cached
