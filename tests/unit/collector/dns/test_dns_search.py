"""Search-path expansion marking from a client's resolv.conf, in wire order."""

from __future__ import annotations

from pathlib import Path

from collector.dns.resolvconf import ResolvConfReader
from collector.dns.search import Mark, SearchConfig, SearchTracker, parse_resolv_conf

K8S = SearchConfig(("default.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5)
A, AAAA = 1, 28


def tracker(config: SearchConfig | None = K8S) -> SearchTracker:
    return SearchTracker(lambda _cgroup: config)


def marks(t: SearchTracker, names: list[str], qtype: int = A, cgroup: int = 1) -> list[Mark]:
    return [t.mark(cgroup, qtype, n, i) for i, n in enumerate(names)]


def test_parse_resolv_conf() -> None:
    text = (
        "# kubelet\nnameserver 10.96.0.10\nsearch Default.svc.cluster.local. "
        "svc.cluster.local cluster.local\noptions ndots:5 timeout:1 ;x\n"
    )
    assert parse_resolv_conf(text) == SearchConfig(K8S.search, 5, ("10.96.0.10",))
    assert parse_resolv_conf("domain a.b\nsearch c.d\n").search == ("c.d",)
    assert parse_resolv_conf("options ndots:99 ndots:x").ndots == 15
    assert parse_resolv_conf("").ndots == 1


def test_external_name_full_sequence() -> None:
    names = [
        "api.example.com.default.svc.cluster.local",
        "api.example.com.svc.cluster.local",
        "api.example.com.cluster.local",
        "api.example.com",
    ]
    assert marks(tracker(), names) == [Mark(True, "api.example.com")] * 3 + [
        Mark(False, "api.example.com")
    ]


def test_short_service_name_found_by_first_expansion() -> None:
    t = tracker()
    assert marks(t, ["web.default.svc.cluster.local"]) == [Mark(True, "web")]


def test_absolute_looking_name_asked_directly_is_told_apart() -> None:
    """Asking for web.default.svc.cluster.local (4 dots < 5) expands it first; its own query
    comes last and is the asked name, not an expansion of "web"."""
    base = "web.default.svc.cluster.local"
    names = [f"{base}.{s}" for s in K8S.search] + [base]
    assert marks(tracker(), names) == [Mark(True, base)] * 3 + [Mark(False, base)]


def test_many_dots_tried_as_is_first() -> None:
    names = ["a.b.c.d.e.f", "a.b.c.d.e.f.default.svc.cluster.local"]
    assert marks(tracker(), names) == [Mark(False, None), Mark(True, "a.b.c.d.e.f")]


def test_many_dots_expansion_needs_its_as_is_query_first() -> None:
    """glibc asks a name of ndots dots or more as is before the search list, and musl never
    expands it: "a.b.c.d.e.f.<search[0]>" with no "a.b.c.d.e.f" before it is not an
    expansion of it."""
    names = ["a.b.c.d.e.f.default.svc.cluster.local"]
    assert marks(tracker(), names) == [Mark(False, None)]
    with_as_is = ["a.b.c.d.e.f"] + [f"a.b.c.d.e.f.{s}" for s in K8S.search]
    assert marks(tracker(), with_as_is) == [Mark(False, None)] + [Mark(True, "a.b.c.d.e.f")] * 3


def test_many_dots_name_asked_again_starts_over() -> None:
    t = tracker()
    assert marks(t, ["a.b.c.d.e.f", "a.b.c.d.e.f", "a.b.c.d.e.f.default.svc.cluster.local"]) == [
        Mark(False, None),
        Mark(False, None),
        Mark(True, "a.b.c.d.e.f"),
    ]


def test_a_and_aaaa_interleaved() -> None:
    t = tracker()
    seq = [
        (A, "x.default.svc.cluster.local"),
        (AAAA, "x.default.svc.cluster.local"),
        (A, "x.svc.cluster.local"),
        (AAAA, "x.svc.cluster.local"),
        (A, "x"),
        (AAAA, "x"),
    ]
    got = [t.mark(1, qtype, name, i) for i, (qtype, name) in enumerate(seq)]
    assert got == [Mark(True, "x")] * 4 + [Mark(False, "x")] * 2


def test_unrelated_and_out_of_order_names_are_not_expansions() -> None:
    assert marks(tracker(), ["x.svc.cluster.local", "example.org"]) == [Mark(False, None)] * 2


def test_unknown_or_empty_config() -> None:
    t = tracker(None)
    assert marks(t, ["x.default.svc.cluster.local"]) == [Mark(None, None)]
    assert t.stats.unknown_config == 1
    assert marks(tracker(SearchConfig((), 1)), ["x.default.svc.cluster.local"]) == [
        Mark(False, None)
    ]


def test_sequences_expire() -> None:
    t = SearchTracker(lambda _c: K8S, sequence_ttl_s=1)
    t.mark(1, A, "x.default.svc.cluster.local", 0)
    assert t.mark(1, A, "x.svc.cluster.local", 2_000_000_000) == Mark(False, None)


def test_reader_takes_a_process_resolv_conf_and_caches(tmp_path: Path) -> None:
    cg = tmp_path / "cg" / "kubepods" / "podx" / "c1"
    cg.mkdir(parents=True)
    (cg / "cgroup.procs").write_text("4242\n")
    conf = tmp_path / "proc" / "4242" / "root" / "etc"
    conf.mkdir(parents=True)
    (conf / "resolv.conf").write_text("search a.b\noptions ndots:3\n")
    now = [0.0]
    reader = ResolvConfReader(
        tmp_path / "cg",
        lambda _c: "/kubepods/podx/c1",
        proc=tmp_path / "proc",
        clock=lambda: now[0],
    )
    assert reader(7) == SearchConfig(("a.b",), 3, ())
    (conf / "resolv.conf").write_text("search changed\n")
    assert reader(7) == SearchConfig(("a.b",), 3, ())  # cached
    now[0] = 61.0
    assert reader(7) is not None and reader(7) == SearchConfig(("changed",), 1, ())
    missing = ResolvConfReader(tmp_path / "cg", lambda _c: None, proc=tmp_path / "proc")
    assert missing(8) is None and missing.stats.failures == 1
