"""The data-transfer price table (config/prices.yaml) and exact cost arithmetic.

Prices are kept as :class:`~decimal.Decimal` and bytes as integers, so a cost is exact until
it is rounded once, when a record is published (to 1e-9 USD): tests check dollars to the cent
against independently computed totals, whatever the number of windows or records.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from processors import ProcessorsError

CLOUDS = ("aws", "gcp", "azure", "custom")
PRICED_CLASSES = ("same_zone", "cross_zone", "cross_region", "internet")
BYTES_PER_GB_CHOICES = (10**9, 2**30)
_PUBLISH_QUANTUM = Decimal("1e-9")


class PriceTableError(ProcessorsError, ValueError):
    """The price file is missing, malformed, or names an unknown cloud/class."""


@dataclass(frozen=True)
class PathPrice:
    """USD per GB paid by the sending and by the receiving end's account on one path class."""

    sent: Decimal
    received: Decimal


@dataclass(frozen=True)
class PriceTable:
    cloud: str
    bytes_per_gb: int
    prices: dict[str, PathPrice]  # class -> price; classes absent here are not priced
    # Domain names a suffix groups (x.s3.amazonaws.com -> s3.amazonaws.com), longest first.
    domain_groups: tuple[str, ...] = ()
    # Pod and node label keys that cost is also rolled up by (scopes "label", "node_label").
    rollup_labels: tuple[str, ...] = ()
    rollup_node_labels: tuple[str, ...] = ()

    def domain_group(self, name: str) -> str:
        """The roll-up name of a server's domain: the longest listed suffix it is below (or
        equal to), else the name itself."""
        name = name.rstrip(".").lower()
        for suffix in self.domain_groups:
            if name == suffix or name.endswith("." + suffix):
                return suffix
        return name

    def price(self, cost_class: str) -> PathPrice | None:
        return self.prices.get(cost_class)

    def usd(self, nbytes: int, usd_per_gb: Decimal) -> Decimal:
        """Exact dollars for ``nbytes`` at ``usd_per_gb``."""
        return Decimal(nbytes) * usd_per_gb / self.bytes_per_gb


def publishable(usd: Decimal) -> float:
    """The published form of an exact amount: rounded to 1e-9 USD (exact to the cent up to
    about $10^6 in a double)."""
    return float(usd.quantize(_PUBLISH_QUANTUM))


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PriceTableError(f"{where}: expected a number of USD per GB, got {value!r}")
    try:
        # str() first: 0.01 read as a float becomes Decimal("0.01"), not its binary value.
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise PriceTableError(f"{where}: not a number: {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise PriceTableError(f"{where}: price must be a finite number >= 0, got {value!r}")
    return number


def parse_price_table(data: Any, cloud: str | None = None, source: str = "prices") -> PriceTable:
    """Build the table for ``cloud`` (default: the file's ``cloud``) from parsed YAML."""
    if not isinstance(data, dict):
        raise PriceTableError(f"{source}: expected a mapping at the top level")
    units = data.get("units") or {}
    if not isinstance(units, dict) or units.get("currency", "USD") != "USD":
        raise PriceTableError(f"{source}: units.currency must be USD")
    bytes_per_gb = units.get("bytes_per_gb", 10**9)
    if bytes_per_gb not in BYTES_PER_GB_CHOICES:
        raise PriceTableError(
            f"{source}: units.bytes_per_gb must be 1000000000 (GB) or 1073741824 (GiB), "
            f"got {bytes_per_gb!r}"
        )
    chosen = cloud or data.get("cloud")
    if chosen not in CLOUDS:
        raise PriceTableError(f"{source}: cloud {chosen!r} is not one of {', '.join(CLOUDS)}")
    clouds = data.get("clouds")
    if not isinstance(clouds, dict) or not isinstance(clouds.get(chosen), dict):
        raise PriceTableError(f"{source}: no price table under clouds.{chosen}")
    prices: dict[str, PathPrice] = {}
    for cost_class, entry in clouds[chosen].items():
        where = f"{source}: clouds.{chosen}.{cost_class}"
        if cost_class not in PRICED_CLASSES:
            raise PriceTableError(f"{where}: unknown class; use {', '.join(PRICED_CLASSES)}")
        if not isinstance(entry, dict) or set(entry) != {"sent", "received"}:
            raise PriceTableError(f"{where}: expected {{sent: <USD/GB>, received: <USD/GB>}}")
        prices[cost_class] = PathPrice(
            sent=_decimal(entry["sent"], f"{where}.sent"),
            received=_decimal(entry["received"], f"{where}.received"),
        )
    groups = data.get("domain_groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise PriceTableError(f"{source}: domain_groups must be a list of domain suffixes")
    suffixes = {g.strip().removeprefix("*.").rstrip(".").lower() for g in groups}
    if any("*" in g or not g for g in suffixes):
        raise PriceTableError(f"{source}: domain_groups: a '*' may only lead a suffix (*.x)")
    return PriceTable(
        cloud=chosen,
        bytes_per_gb=bytes_per_gb,
        prices=prices,
        domain_groups=tuple(sorted(suffixes, key=lambda g: (-g.count("."), g))),
        rollup_labels=_keys(data, "rollup_labels", source),
        rollup_node_labels=_keys(data, "rollup_node_labels", source),
    )


def _keys(data: dict[str, Any], name: str, source: str) -> tuple[str, ...]:
    keys = data.get(name) or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise PriceTableError(f"{source}: {name} must be a list of label keys")
    return tuple(dict.fromkeys(keys))


def load_price_table(path: Path, cloud: str | None = None) -> PriceTable:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceTableError(f"cannot read the price table {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PriceTableError(f"{path}: not valid YAML: {exc}") from exc
    return parse_price_table(data, cloud, source=str(path))
