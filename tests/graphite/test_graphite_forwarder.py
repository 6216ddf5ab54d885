"""The ``graphite`` forwarder: the contract suite against a carbon stand-in, naming (plain and
Etsy's), client bytes that must not become graphite syntax, reconnects and the spool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import FakeCarbon, free_port, wait_for

from forwarders import ForwarderContext, SeriesStats, Snapshot, load_forwarder_class
from forwarders.base import ETSY_TIMER_STATS
from forwarders.contract import AggregateContract
from pystatsd.config import build_config
from pystatsd.snapshot import ExtendedSeriesStats


def section(**keys: Any) -> dict[str, Any]:
    """A section validated and filled with defaults, as the daemon hands it over."""
    config = build_config({"forwarders": {"carbon": {"type": "graphite", **keys}}})
    result: dict[str, Any] = config["forwarders"]["carbon"]
    return result


def make(tmp_path: Path, debug_mode: bool = False, **keys: Any) -> Any:
    cls = load_forwarder_class("graphite")
    return cls("carbon", section(**keys), ForwarderContext(debug_mode=debug_mode,
                                                           host="test-host",
                                                           state_dir=tmp_path))


class GraphiteHarness:
    """Counts series delivered: distinct (path without its stat and tags, timestamp)."""

    def __init__(self, tmp_path: Path, carbon: FakeCarbon) -> None:
        self.tmp_path = tmp_path
        self.carbon = carbon

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        port_key = "pickle_port" if self.carbon.protocol == "pickle" else "port"
        return make(self.tmp_path, debug_mode, queue_size=queue_size,
                    protocol=self.carbon.protocol, **{port_key: self.carbon.port})

    def delivered(self) -> int:
        return len({(path.split(";")[0].rsplit(".", 1)[0], stamp)
                    for path, _, stamp in self.carbon.snapshot()})


class TestGraphitePlaintextContract(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Any:
        carbon = FakeCarbon("plaintext")
        yield GraphiteHarness(tmp_path, carbon)
        carbon.close()


class TestGraphitePickleContract(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Any:
        carbon = FakeCarbon("pickle")
        yield GraphiteHarness(tmp_path, carbon)
        carbon.close()


def flush(*series: SeriesStats, start: float = 1_700_000_000.0) -> Snapshot:
    return Snapshot(start, 10.0, "h", series)


TIMER_STATS = {"count": 4.0, "sum": 10.0, "min": 1.0, "max": 4.0, "mean": 2.5, "median": 2.5,
               "stddev": 1.118, "p90": 4.0, "p99_9": 4.0}


def paths(forwarder: Any, snapshot: Snapshot) -> dict[str, float]:
    return {path: value for path, value, _ in forwarder.datapoints(snapshot)}


def test_plain_naming_writes_every_stat_with_graphite_tags(tmp_path: Path) -> None:
    forwarder = make(tmp_path, prefix="pystatsd.")
    got = paths(forwarder, flush(
        SeriesStats("api.hits", "counter", (("env", "prod"), ("zone", "b")),
                    {"count": 20.0, "rate": 2.0}),
        SeriesStats("q.depth", "gauge", (), {"value": -3.0})))
    assert got == {"pystatsd.api.hits.count;env=prod;zone=b": 20.0,
                   "pystatsd.api.hits.rate;env=prod;zone=b": 2.0,
                   "pystatsd.q.depth.value": -3.0}


def test_etsy_legacy_namespace_is_graphite_js_with_its_defaults(tmp_path: Path) -> None:
    forwarder = make(tmp_path, naming="etsy", tags="omit")
    got = paths(forwarder, flush(
        SeriesStats("api.hits", "counter", (), {"count": 20.0, "rate": 2.0}),
        SeriesStats("api.time", "timer", (), dict(TIMER_STATS)),
        SeriesStats("q.depth", "gauge", (), {"value": 7.0}),
        SeriesStats("users", "set", (), {"count": 3.0})))
    assert got == {
        "stats.api.hits": 2.0, "stats_counts.api.hits": 20.0,
        "stats.timers.api.time.count": 4.0, "stats.timers.api.time.sum": 10.0,
        "stats.timers.api.time.lower": 1.0, "stats.timers.api.time.upper": 4.0,
        "stats.timers.api.time.mean": 2.5, "stats.timers.api.time.median": 2.5,
        "stats.timers.api.time.std": 1.118, "stats.timers.api.time.upper_90": 4.0,
        "stats.timers.api.time.upper_99_9": 4.0, "stats.timers.api.time.count_ps": 0.4,
        "stats.gauges.q.depth": 7.0, "stats.sets.users.count": 3.0}


def test_etsy_naming_asks_for_etsys_timer_stats_and_plain_does_not() -> None:
    cls = load_forwarder_class("graphite")
    assert cls.needed_stats(section(naming="etsy")) == {ETSY_TIMER_STATS}
    assert cls.needed_stats(section()) == frozenset()


def test_etsy_timer_stats_written_under_etsys_names_in_place_of_percentiles(
        tmp_path: Path) -> None:
    forwarder = make(tmp_path, naming="etsy", tags="omit")
    extra = {"sum_squares": 30.0, "count_90": 3.0, "mean_90": 2.0, "upper_90": 3.0,
             "sum_90": 6.0, "sum_squares_90": 14.0}
    got = paths(forwarder, flush(ExtendedSeriesStats("api.time", "timer", (), dict(TIMER_STATS),
                                                     extra_stats=extra)))
    timer = "stats.timers.api.time."
    assert got == {
        timer + "count": 4.0, timer + "sum": 10.0, timer + "lower": 1.0, timer + "upper": 4.0,
        timer + "mean": 2.5, timer + "median": 2.5, timer + "std": 1.118,
        timer + "count_ps": 0.4, **{timer + key: value for key, value in extra.items()}}
    # Etsy's upper_90 (round), not our p90 (nearest-rank); no p99_9 path Etsy would not write
    assert got[timer + "upper_90"] == 3.0 and timer + "upper_99_9" not in got


def test_etsy_new_namespace_prefixes_and_suffix(tmp_path: Path) -> None:
    forwarder = make(tmp_path, naming="etsy", etsy={
        "legacy_namespace": False, "global_prefix": "g", "prefix_counter": "",
        "prefix_gauge": "gg", "global_suffix": "sfx", "flush_counts": False})
    got = paths(forwarder, flush(
        SeriesStats("hits", "counter", (("env", "a"),), {"count": 20.0, "rate": 2.0}),
        SeriesStats("depth", "gauge", (), {"value": 7.0}),
        SeriesStats("users", "set", (), {"count": 3.0})))
    # graphite.js: namespace + name + stat, then globalSuffix, then the ;tags
    assert got == {"g.hits.rate.sfx;env=a": 2.0, "g.gg.depth.sfx": 7.0,
                   "g.sets.users.count.sfx": 3.0}


@pytest.mark.parametrize("name", ["evil 1 0\nforged.path", "a b", "semi;colon=x", "tab\tname"])
def test_a_name_never_forges_a_datapoint(tmp_path: Path, name: str) -> None:
    # check_name already refuses control characters at ingest; spaces and ';' are legal there
    series = SeriesStats(name, "gauge", (("k", "v w;x=y"),), {"value": 1.0})
    sanitized = make(tmp_path)
    [(path, value, stamp)] = sanitized.datapoints(flush(series))
    assert " " not in path and "\n" not in path and "\t" not in path
    assert path.count(";") == 1 and path.endswith(";k=v_w_x=y")
    strict = make(tmp_path, sanitize=False)
    assert strict.datapoints(flush(series)) == []
    assert strict.stats()["refused_names"] == 1


def gauge(name: str, value: float) -> SeriesStats:
    return SeriesStats(name, "gauge", (), {"value": value})


def test_a_carbon_restart_between_flushes_loses_nothing(tmp_path: Path) -> None:
    carbon = FakeCarbon()
    forwarder = make(tmp_path, port=carbon.port, backoff_min=0.05)
    forwarder.start()
    try:
        assert forwarder.submit(flush(gauge("a", 1.0)))
        wait_for(lambda: len(carbon.snapshot()) == 1, what="the first flush")
        carbon.close()  # carbon restarts on the same port; our connection is now dead
        carbon = FakeCarbon(port=carbon.port)
        time.sleep(0.1)
        assert forwarder.submit(flush(gauge("a", 2.0), start=1_700_000_010.0))
        wait_for(lambda: len(carbon.snapshot()) == 1, what="the flush after the restart")
        assert carbon.snapshot() == [("a.value", 2.0, 1_700_000_010.0)]
    finally:
        forwarder.close(5)
        carbon.close()
    assert forwarder.stats()["send_errors"] == 0 and forwarder.stats()["connects"] == 2


def test_without_a_spool_a_flush_carbon_cannot_take_is_counted_lost(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    forwarder = make(tmp_path, port=port, backoff_min=0.05)
    forwarder.start()
    assert forwarder.submit(flush(gauge("a", 1.0)))
    wait_for(lambda: forwarder.stats()["send_errors"] == 1, what="the failed send")
    assert forwarder.close(5) == 0
    assert forwarder.stats()["datapoints_sent"] == 0


@pytest.mark.parametrize("protocol", ["plaintext", "pickle"])
def test_spool_outage_restart_recovery_exact_counts(tmp_path: Path, protocol: str) -> None:
    port = free_port()
    port_key = "pickle_port" if protocol == "pickle" else "port"
    keys = {"protocol": protocol, port_key: port, "backoff_min": 0.05, "backoff_max": 0.05,
            "spool_max_bytes": 1 << 20}
    start = 1_700_000_000.0
    # an outage: three flushes find nothing listening and go to the spool
    first = make(tmp_path, **keys)
    first.start()
    for i in range(3):
        assert first.submit(flush(gauge("out", float(i)), gauge("age", 10.0 * i),
                                  start=start + 10 * i))
    wait_for(lambda: first.stats()["spooled"] == 6, what="six datapoints spooled")
    assert first.close(5) == 0  # the daemon restarts during the outage
    spool_files = list((tmp_path / "spool" / "carbon").glob("*.seg"))
    assert spool_files and sum(f.stat().st_size for f in spool_files) > 0
    # after the restart, one more flush spooled, then carbon comes back
    second = make(tmp_path, **keys)
    second.start()
    assert second.submit(flush(gauge("out", 3.0), start=start + 30))
    wait_for(lambda: second.stats()["spooled"] == 1, what="the flush after the restart spooled")
    carbon = FakeCarbon(protocol, port=port)
    try:
        time.sleep(0.1)
        assert second.submit(flush(gauge("out", 4.0), start=start + 40))
        wait_for(lambda: len(carbon.snapshot()) >= 8, what="spool and new flush delivered")
        time.sleep(0.2)  # nothing more (no duplicate) arrives
        assert carbon.snapshot() == [
            ("out.value", 0.0, start), ("age.value", 0.0, start),
            ("out.value", 1.0, start + 10), ("age.value", 10.0, start + 10),
            ("out.value", 2.0, start + 20), ("age.value", 20.0, start + 20),
            ("out.value", 3.0, start + 30), ("out.value", 4.0, start + 40)]
        stats = second.stats()
        assert stats["spool_sent"] == 7 and stats["datapoints_sent"] == 8
        assert stats["spool_bytes"] == 0 and stats["spool_dropped"] == 0
    finally:
        assert second.close(5) == 0
        carbon.close()
    # a third start finds the spool empty: nothing delivered twice
    third = make(tmp_path, **keys)
    third.start()
    assert third.close(5) == 0 and third.stats()["spool_sent"] == 0


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    forwarder = make(tmp_path, port=free_port(), backoff_min=0.05, spool_max_bytes=200)
    forwarder.start()
    try:
        for i in range(5):
            assert forwarder.submit(flush(gauge("fill.the.spool", float(i)),
                                          start=1_700_000_000.0 + 10 * i))
        wait_for(lambda: forwarder.stats()["spooled"] + forwarder.stats()["spool_dropped"] == 5,
                 what="every flush spooled or dropped")
    finally:
        forwarder.close(5)
    stats = forwarder.stats()
    assert stats["spool_dropped"] > 0 and stats["spooled"] > 0
    assert stats["send_errors"] == stats["spool_dropped"]
