"""carbon_routes' routing table changed at runtime (the relay hook carbon-relay-ng's
``addRoute``/``modRoute``/``delRoute`` map onto), on the forwarder and real TCP sockets: under a
steady stream every line lands once, a route's change takes effect between two datagrams, a
destination kept by the change keeps its connection, a removed one delivers what it holds (or,
unreachable, leaves its spool on disk), and a refused change changes nothing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import FakeCarbon, free_port, wait_for

from forwarders import ForwarderContext, load_forwarder_class
from pystatsd.config import build_config

STAMP = 1700000000


def build(tmp_path: Path, routes: list[dict[str, Any]], **keys: Any) -> Any:
    section = build_config({"forwarders": {"routes": {"type": "carbon_routes", "routes": routes,
                                                      "backoff_min": 0.05, "backoff_max": 0.2,
                                                      **keys}}})["forwarders"]["routes"]
    forwarder = load_forwarder_class("carbon_routes")("routes", section, ForwarderContext(
        state_dir=tmp_path))
    forwarder.start()
    return forwarder


def to(carbon: FakeCarbon | int, **options: Any) -> dict[str, Any]:
    port = carbon if isinstance(carbon, int) else carbon.port
    return {"address": f"127.0.0.1:{port}", **options}


def numbers(carbon: FakeCarbon, prefix: str = "") -> list[int]:
    """The line numbers a sink got (paths ``<prefix>n<i>``), in arrival order."""
    return [int(path.rsplit(".n", 1)[1]) for path, _, _ in carbon.snapshot()
            if path.startswith(prefix)]


class Stream:
    """Submits datagrams of ``per`` lines ``stream.n<i>`` on a thread, as the receive path
    does, until stopped; ``sent`` says how many lines went."""

    def __init__(self, forwarder: Any, per: int = 5) -> None:
        self.forwarder = forwarder
        self.per = per
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            lines = [f"stream.n{self.sent + i} 1 {STAMP}".encode() for i in range(self.per)]
            assert self.forwarder.submit_lines(lines)
            self.sent += self.per
            self._stop.wait(0.002)

    def until(self, lines: int) -> None:
        start = self.sent
        wait_for(lambda: self.sent >= start + lines, what=f"{lines} more lines sent")

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.sent


def contiguous(seen: list[int]) -> bool:
    return sorted(seen) == list(range(min(seen), max(seen) + 1))


def test_route_added_changed_and_removed_under_a_steady_stream(tmp_path: Path) -> None:
    main, copy = FakeCarbon(), FakeCarbon()
    forwarder = build(tmp_path, [{"key": "main", "type": "send_all_match",
                                  "destinations": [to(main)]}])
    try:
        stream = Stream(forwarder)
        stream.until(200)
        forwarder.apply_routes([*forwarder.routes(),  # addRoute
                                {"name": "copy", "type": "send_all_match", "prefix": "stream.",
                                 "destinations": [to(copy)]}])
        stream.until(200)
        routes = forwarder.routes()  # modRoute: the copy takes nothing any more
        routes[1]["prefix"] = "elsewhere."
        forwarder.apply_routes(routes)
        stream.until(100)
        forwarder.apply_routes(forwarder.routes()[:1])  # delRoute
        stream.until(100)
        sent = stream.stop()
        wait_for(lambda: len(main.snapshot()) == sent, what="every line at main")
        assert sorted(numbers(main)) == list(range(sent))  # each once, none lost
        copied = numbers(copy)
        # the copy route saw one unbroken run of the stream: from the datagram after the
        # add to the datagram before the change, each line once
        assert len(copied) >= 200 and contiguous(copied) and len(set(copied)) == len(copied)
        assert min(copied) % stream.per == 0 and (max(copied) + 1) % stream.per == 0
        assert main.connections == 1  # the route kept, its destination kept: one connection
        assert forwarder.close(5) == 0
    finally:
        main.close()
        copy.close()


def test_a_destination_moved_between_routes_keeps_its_connection_and_queue(
        tmp_path: Path) -> None:
    first, second = FakeCarbon(), FakeCarbon()
    forwarder = build(tmp_path, [{"key": "a", "type": "send_all_match",
                                  "destinations": [to(first, instance="a")]}])
    try:
        assert forwarder.submit_lines([f"x.n{i} 1 {STAMP}".encode() for i in range(50)])
        # the destination now listed by a consistent hashing route, beside a new one (carbon's
        # ring tells destinations on one host apart by their instance only)
        forwarder.apply_routes([{"name": "b", "type": "consistent_hashing",
                                 "destinations": [to(first, instance="a"),
                                                  to(second, instance="b")]}])
        assert forwarder.submit_lines([f"x.n{i} 1 {STAMP}".encode() for i in range(50, 250)])
        wait_for(lambda: len(first.snapshot()) + len(second.snapshot()) == 250,
                 what="every line delivered")
        assert set(range(50)) <= set(numbers(first))  # routed before the change: kept
        assert sorted(numbers(first) + numbers(second)) == list(range(250))
        assert numbers(second)  # the ring shares the keys out
        assert first.connections == 1
        stats = forwarder.stats()
        assert stats[f"destination.127_0_0_1_{first.port}_a.sent"] == len(first.snapshot())
        assert forwarder.close(5) == 0
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("change, message", [
    (lambda r: [{**r[0], "type": "send_to_nobody"}], "type"),
    (lambda r: [{**r[0], "regex": "(["}], "bad regular expression"),
    (lambda r: [r[0], {**r[0]}], "unique"),
    (lambda r: [{**r[0], "destinations": []}], "destinations"),
    (lambda r: [{**r[0], "destinations": [{**r[0]["destinations"][0], "spool": True}]}],
     "spool of running destination"),
    (lambda r: [{**r[0], "destinations": [{"address": "no-port"}]}], "host:port"),
    (lambda r: [], "routes"),
])
def test_a_refused_change_says_why_and_changes_nothing(tmp_path: Path, change: Any,
                                                       message: str) -> None:
    carbon = FakeCarbon()
    forwarder = build(tmp_path, [{"key": "main", "type": "send_all_match",
                                  "destinations": [to(carbon)]}])
    try:
        before = forwarder.routes()
        with pytest.raises(ValueError, match=message):
            forwarder.apply_routes(change(before))
        assert forwarder.routes() == before
        assert forwarder.submit_lines([f"after.n{i} 1 {STAMP}".encode() for i in range(3)])
        wait_for(lambda: len(carbon.snapshot()) == 3, what="lines still flowing")
        assert carbon.connections == 1
        assert forwarder.close(5) == 0
    finally:
        carbon.close()


def test_a_removed_unreachable_destination_leaves_its_spool_and_a_route_naming_it_sends_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = FakeCarbon()
    down_port = free_port()
    spooled = to(down_port, spool=True)
    forwarder = build(tmp_path, [{"key": "live", "type": "send_all_match",
                                  "destinations": [to(live)]},
                                 {"key": "backup", "type": "send_all_match",
                                  "destinations": [spooled]}])
    dead = f"destination.127_0_0_1_{down_port}"
    try:
        assert forwarder.submit_lines([f"out.n{i} 1 {STAMP}".encode() for i in range(40)])
        wait_for(lambda: forwarder.stats()[f"{dead}.spooled"] == 40, what="spooled")
        with caplog.at_level(logging.INFO, logger="pystatsd"):
            forwarder.apply_routes(forwarder.routes()[:1])
            wait_for(lambda: f"{dead}.spooled" not in forwarder.stats(), what="retired")
        assert "its spool (1 records, " in caplog.text and str(down_port) in caplog.text
        spool_dir = tmp_path / "spool" / "routes" / f"127_0_0_1_{down_port}"
        assert any(spool_dir.glob("*.seg"))  # kept on disk, as the log says
        assert forwarder.submit_lines([f"out.n{i} 1 {STAMP}".encode() for i in range(40, 50)])
        wait_for(lambda: len(live.snapshot()) == 50, what="the live route unaffected")

        back = FakeCarbon(port=down_port)  # the destination comes back; a route names it
        try:
            forwarder.apply_routes([*forwarder.routes(),
                                    {"name": "backup", "type": "send_all_match",
                                     "destinations": [spooled]}])
            wait_for(lambda: len(back.snapshot()) == 40, what="the spool replayed")
            assert sorted(numbers(back)) == list(range(40))
            assert forwarder.close(5) == 0
        finally:
            back.close()
    finally:
        live.close()


def test_a_removed_reachable_destination_delivers_what_it_held(tmp_path: Path) -> None:
    kept, removed = FakeCarbon(), FakeCarbon()
    forwarder = build(tmp_path, [{"key": "kept", "type": "send_all_match",
                                  "destinations": [to(kept)]},
                                 {"key": "gone", "type": "send_all_match",
                                  "destinations": [to(removed)]}])
    try:
        assert forwarder.submit_lines([f"q.n{i} 1 {STAMP}".encode() for i in range(1000)])
        forwarder.apply_routes(forwarder.routes()[:1])  # submitted before: still goes to both
        assert forwarder.submit_lines([f"q.n{i} 1 {STAMP}".encode() for i in range(1000, 1010)])
        wait_for(lambda: len(kept.snapshot()) == 1010, what="kept route")
        wait_for(lambda: len(removed.snapshot()) == 1000, what="the removed one drained")
        assert sorted(numbers(removed)) == list(range(1000))
        wait_for(lambda: not any(k.startswith(f"destination.127_0_0_1_{removed.port}.")
                                 for k in forwarder.stats()), what="closed once drained")
        assert forwarder.close(5) == 0
    finally:
        kept.close()
        removed.close()
