"""The list-then-watch loop against a scripted API: 410 Gone, errors, bookmarks, pages."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from enricher.publish.kubewatch import Backoff, ResourceWatch


class FakeResponse:
    def __init__(
        self, status: int = 200, data: bytes = b"", lines: list[dict[str, Any]] | None = None
    ) -> None:
        self.status = status
        self.reason = "scripted"
        self.data = data
        self._chunks = [json.dumps(line).encode() + b"\n" for line in lines or []]

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from self._chunks

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _node(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class ScriptedApi:
    """Answers list and watch calls from a script; records the calls' arguments."""

    def __init__(self, script: list[Any], done: threading.Event) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.done = done

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if not self.script:
            self.done.set()
            time.sleep(0.05)
            return FakeResponse(lines=[])
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def _run(script: list[Any]) -> tuple[ResourceWatch, ScriptedApi, list[Any], list[Any]]:
    done = threading.Event()
    api = ScriptedApi(script, done)
    snapshots: list[Any] = []
    events: list[Any] = []
    watch = ResourceWatch(
        "Node",
        api,
        lambda _k, items: snapshots.append([i["metadata"]["name"] for i in items]),
        lambda _k, t, o: events.append((t, o["metadata"]["name"])),
        backoff=Backoff(initial_s=0.001, max_s=0.002),
        page_size=2,
    )
    watch.start()
    assert done.wait(5), "the script did not run to its end"
    watch.stop()
    return watch, api, snapshots, events


def _list(rv: str, names: list[str], cont: str | None = None) -> FakeResponse:
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    items = [_node(n, rv) for n in names]
    return FakeResponse(data=json.dumps({"metadata": meta, "items": items}).encode())


def test_pages_then_watch_from_the_list_version_with_bookmarks() -> None:
    watch, api, snapshots, events = _run(
        [
            _list("10", ["a", "b"], cont="page2"),
            _list("10", ["c"]),
            FakeResponse(
                lines=[
                    {"type": "ADDED", "object": _node("d", "11")},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                ]
            ),
        ]
    )
    assert snapshots == [["a", "b", "c"]]
    assert api.calls[1]["_continue"] == "page2"
    assert api.calls[2]["resource_version"] == "10" and api.calls[2]["allow_watch_bookmarks"]
    assert events == [("ADDED", "d")]
    # The server ended the watch: the next one resumes from the bookmark, not the list.
    assert api.calls[3]["resource_version"] == "15"
    assert watch.counters.bookmarks == 1 and watch.counters.lists == 1


def test_410_gone_in_the_stream_or_as_a_status_relists() -> None:
    watch, _api, snapshots, events = _run(
        [
            _list("10", ["a"]),
            FakeResponse(
                lines=[
                    {"type": "MODIFIED", "object": _node("a", "12")},
                    {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
                ]
            ),
            _list("20", ["a", "b"]),
            ApiException(status=410, reason="Gone"),
            _list("30", ["b"]),
        ]
    )
    assert snapshots == [["a"], ["a", "b"], ["b"]]
    assert events == [("MODIFIED", "a")]
    assert watch.counters.relists_gone == 2 and watch.counters.lists == 3
    assert watch.counters.errors == 0


def test_errors_back_off_and_resume_from_the_last_version() -> None:
    watch, api, snapshots, events = _run(
        [
            ApiException(status=503, reason="unavailable"),  # the list fails: list again
            _list("10", ["a"]),
            FakeResponse(lines=[{"type": "DELETED", "object": _node("a", "11")}]),
            ConnectionResetError("dropped"),
            FakeResponse(status=500, data=b"oops"),
            FakeResponse(lines=[{"type": "ADDED", "object": _node("b", "12")}]),
        ]
    )
    assert snapshots == [["a"]]
    assert events == [("DELETED", "a"), ("ADDED", "b")]
    assert watch.counters.errors == 3 and watch.counters.lists == 1
    assert [c.get("resource_version") for c in api.calls[3:6]] == ["11", "11", "11"]
