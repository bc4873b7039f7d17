"""The consumers' record builders live beside their unit tests; share them, not copy them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "consumers"))
