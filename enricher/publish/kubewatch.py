"""List-then-watch of one Kubernetes resource through the official client, as plain dicts.

The loop client-go's reflector runs, in small: list (which gives a resourceVersion), then
watch from that version with bookmarks (so a reconnect resumes from a recent version, not an
old one the server may have compacted); on ``410 Gone`` (the version is too old) list again;
on any other failure reconnect with exponential backoff and jitter, from the last version seen.

Objects are decoded from the raw JSON (``_preload_content=False``) into dicts shaped like
``kubectl get -o json`` output, which :mod:`enricher.publish.kubeobjects` already reads.
The client's model classes are skipped: deserialising a list of 10,000 pods into them takes
many seconds.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("enricher.publish.kubewatch")

Obj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
# What the watch reports to its owner: a complete snapshot (after every list), or one change.
OnSnapshot = Callable[[str, list[Obj]], None]
OnEvent = Callable[[str, EventType, Obj], None]
ListFn = Callable[..., Any]

GONE = 410


class WatchExpired(Exception):
    """The resourceVersion is too old for the server: list again."""


@dataclass
class WatchCounters:
    lists: int = 0
    relists_gone: int = 0  # 410 Gone: the watch's version had been compacted away
    watches: int = 0  # watch requests opened (first and every reconnect)
    events: int = 0
    bookmarks: int = 0
    errors: int = 0  # failed requests and broken streams (each followed by a backoff)


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            # Full jitter: replicas that lost the server together do not return together.
            yield random.uniform(delay / 2, delay)
            delay = min(delay * self.factor, self.max_s)


def _check(resp: Any) -> Any:
    status = getattr(resp, "status", 200)
    if not 200 <= int(status) <= 299:
        body = resp.data.decode("utf-8", "replace") if getattr(resp, "data", None) else ""
        raise ApiException(status=status, reason=getattr(resp, "reason", ""), body=body)
    return resp


class ResourceWatch:
    """One resource kind, listed then watched on a thread of its own until :meth:`stop`."""

    def __init__(
        self,
        kind: str,
        list_fn: ListFn,
        on_snapshot: OnSnapshot,
        on_event: OnEvent,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        page_size: int = 500,
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._on_snapshot = on_snapshot
        self._on_event = on_event
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._backoff = backoff or Backoff()
        self._page_size = page_size
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self.resource_version: str | None = None
        self.synced = threading.Event()  # set after the first complete list
        self.counters = WatchCounters()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Unblock a read that may otherwise wait for the next event (or bookmark).
            try:
                resp.shutdown()
            except Exception:  # shutdown is best effort; the thread also checks the flag
                log.debug("%s: closing the watch stream failed", self.kind, exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        delays = self._backoff.delays()
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
                delays = self._backoff.delays()  # a clean end (server timeout): no backoff
            except WatchExpired:
                self.counters.relists_gone += 1
                log.info(
                    "%s: resourceVersion %s expired (410): listing again",
                    self.kind,
                    self.resource_version,
                )
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == GONE:
                    self.counters.relists_gone += 1
                    need_list = True
                    continue
                self.counters.errors += 1
                delay = next(delays)
                log.warning(
                    "%s: %s: %s; retrying in %.1fs",
                    self.kind,
                    "list" if need_list else "watch",
                    _describe(exc),
                    delay,
                )
                self._stop.wait(delay)

    def _list(self) -> None:
        items: list[Obj] = []
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size}
            if cont:
                kwargs["_continue"] = cont
            resp = _check(
                self._list_fn(
                    _preload_content=False, _request_timeout=self._request_timeout_s, **kwargs
                )
            )
            body = json.loads(resp.data)
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.counters.lists += 1
        self.resource_version = str(meta.get("resourceVersion") or "") or None
        self._on_snapshot(self.kind, items)
        self.synced.set()

    def _watch(self) -> None:
        self.counters.watches += 1
        resp = _check(
            self._list_fn(
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=self.resource_version,
                timeout_seconds=self._watch_timeout_s,
                _preload_content=False,
                # (connect, read): a read timeout past the server's own timeout means the
                # connection is dead, not quiet (bookmarks arrive about once a minute).
                _request_timeout=(self._request_timeout_s, self._watch_timeout_s + 30),
            )
        )
        self._resp = resp
        try:
            lines: Iterator[str] = iter_resp_lines(resp)  # type: ignore[no-untyped-call]
            for line in lines:
                if self._stop.is_set():
                    return
                if line:
                    self._handle(json.loads(line))
        finally:
            self._resp = None
            resp.close()
            resp.release_conn()

    def _handle(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise WatchExpired(obj.get("message", ""))
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            self.counters.bookmarks += 1
            return
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.counters.events += 1
            self._on_event(self.kind, kind, obj)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
