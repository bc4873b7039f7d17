from __future__ import annotations

import pytest
from consumers_records import T0, conn, health, pod

from consumers.facets import FilterError, facets, parse_filter
from flowscope.records import AlertEvent

FE = pod("frontend", "shop")
PAY = pod("payments", "billing")


def _alert(workloads: list[str], status: str = "firing") -> AlertEvent:
    return AlertEvent(
        alert_id="a1",
        status=status,
        rule="conn-failures",
        severity="warning",  # type: ignore[arg-type]
        metric="failure_rate",
        group={},
        affected_workloads=workloads,
        threshold=0.1,
        evidence=[],
        window_start_ns=T0,
        window_end_ns=T0,
        time_ns=T0,
    )


def test_facets_of_a_connection_name_both_ends() -> None:
    f = facets(conn(FE, PAY, outcome="refused"))
    assert f["namespace"] == {"shop", "billing"}
    assert f["workload"] == {"shop/Deployment/frontend", "billing/Deployment/payments"}
    assert f["outcome"] == {"refused"}


def test_an_alerts_namespace_comes_from_its_workload_keys() -> None:
    f = facets(_alert(["billing/Deployment/payments"]))
    assert f["namespace"] == {"billing"}
    assert f["outcome"] == {"firing"}


def test_a_paths_namespaces_are_those_of_the_services_that_used_it() -> None:
    path = health(
        "p",
        "node",
        "n1",
        "n2",
        failures={"refused": 1},
        services=("shop/Deployment/fe -> billing/Deployment/pay",),
    )
    f = facets(path)
    assert f["namespace"] == {"shop", "billing"}
    assert f["workload"] == {"shop/Deployment/fe", "billing/Deployment/pay"}
    assert f["outcome"] == {"refused"}
    assert parse_filter("namespace=billing scope=node").matches(path)
    assert not parse_filter("namespace=payments").matches(path)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", [True, True, True]),
        ("namespace=billing", [False, True, True]),
        ("namespace=shop outcome!=closed", [False, True, False]),
        ("namespace=shop and outcome=refused,reset_by_peer", [False, True, False]),
        ("workload~payments", [False, True, True]),
        ("observer_role=client", [True, True, True]),
        ("client_observed=false", [False, False, False]),
        ("peer_class=cross_zone", [False, False, False]),
    ],
)
def test_filter_expressions(expr: str, expected: list[bool]) -> None:
    records = [
        conn(FE, pod("catalog", "shop")),
        conn(FE, PAY, outcome="refused"),
        conn(pod("ledger", "billing"), PAY),
    ]
    flt = parse_filter(expr)
    assert [flt.matches(r) for r in records] == expected


@pytest.mark.parametrize("expr", ["namespace", "=shop", "namespace=", "a==b c"])
def test_a_malformed_term_is_refused_with_the_valid_forms(expr: str) -> None:
    with pytest.raises(FilterError, match="FIELD=VALUE"):
        parse_filter(expr)
