"""A reload of a changed ``carbon_routes`` section whose destination spools, on the real
daemon: the old instance closes first (what it cannot deliver goes to its spool and the lock is
released), the new one takes the same spool; lines sent before, during and after the reload,
with carbon up, during an outage and after recovery, all land in the carbon once each."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from carbon_servers import FakeCarbon, GraphiteStream, wait_for

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def numbers(*carbons: FakeCarbon) -> list[int]:
    return sorted(int(path.rsplit(".n", 1)[1]) for carbon in carbons
                  for path, _, _ in carbon.snapshot())


def spooling_relay(graphite_port: int, carbon_port: int) -> dict[str, Any]:
    """A relay daemon's config: a graphite TCP listener on ``graphite_port``, one
    ``carbon_routes`` section sending every line to ``carbon_port`` with a spool, and short
    backoffs."""
    return {
        "flush_interval": 3600, "mode": "relay",
        "listeners": [{"protocol": "tcp", "port": graphite_port, "format": "graphite"}],
        "forwarders": {"routes": {
            "type": "carbon_routes", "backoff_min": 0.05, "backoff_max": 0.3,
            "routes": [{"key": "all", "type": "send_all_match", "destinations": [
                {"address": f"127.0.0.1:{carbon_port}", "spool": True}]}]}}}


def write(path: Path, queue_lines: int) -> None:
    """The daemon's file with one change to the section: a reload builds a new instance."""
    config = yaml.safe_load(path.read_text())
    config["forwarders"]["routes"]["routes"][0]["destinations"][0]["queue_lines"] = queue_lines
    path.write_text(yaml.safe_dump(config))


def reload(daemon: Any, times: int) -> None:
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: sum("reloaded" in line for line in daemon.stderr) >= times,
             what=f"reload {times}")


def test_reload_of_a_spooling_section_up_during_an_outage_and_after_recovery_loses_nothing(
        start_daemon: Any, tmp_path: Path) -> None:
    graphite_port = free_port()
    carbon = FakeCarbon()
    carbon_port = carbon.port
    config = spooling_relay(graphite_port, carbon_port)
    daemon = start_daemon(config)
    stream = GraphiteStream(graphite_port, "reload", paused=True)
    back: FakeCarbon | None = None
    try:
        # carbon up: lines flow while the section is reloaded (old drains, new connects)
        stream.run_for(300)
        write(daemon.config_path, 50000)
        reload(daemon, 1)
        stream.run_for(300)
        sent = stream.pause()
        wait_for(lambda: len(carbon.snapshot()) == sent, what="everything so far delivered")
        assert "reload refused" not in "".join(daemon.stderr)
        assert "change only on restart" not in "".join(daemon.stderr)

        # the outage: carbon goes away between two datagrams; lines go to the spool, and a
        # reload meanwhile hands the spool from the old instance to the new one
        carbon.close()
        time.sleep(0.5)  # its connections are closed
        stream.run_for(300)
        write(daemon.config_path, 60000)
        reload(daemon, 2)
        stream.run_for(300)
        during = stream.pause()
        assert "reload refused" not in "".join(daemon.stderr), "".join(daemon.stderr)
        spool = tmp_path / "state" / "spool" / "routes" / f"127_0_0_1_{carbon_port}"
        assert any(spool.glob("*.seg"))

        # recovery: the spool is replayed once, then the lines after it
        back = FakeCarbon(port=carbon_port)
        stream.run_for(300)
        write(daemon.config_path, 70000)
        reload(daemon, 3)  # and once more, while the spool may still be replaying
        stream.run_for(300)
        total = stream.stop()
        assert total > during > sent
        wait_for(lambda: len(carbon.snapshot()) + len(back.snapshot()) >= total, timeout=30,
                 what="every line delivered")
        time.sleep(0.5)  # nothing more arrives: no line twice
        assert numbers(carbon, back) == list(range(total))
        assert daemon.stop() == 0
        assert "lost" not in "".join(line for line in daemon.stderr if "WARNING" in line
                                     or "ERROR" in line)
    finally:
        stream.stop()
        carbon.close()
        if back is not None:
            back.close()


def test_a_successor_that_cannot_start_leaves_the_previous_section_running_with_every_line(
        start_daemon: Any, tmp_path: Path) -> None:
    """The new section's spool directory is held by someone else: the new instance (which the
    receive path already fed) cannot start; the old section starts again, takes the datagrams
    the failed one buffered, and every line still lands once."""
    from forwarders.spool import Spool

    graphite_port = free_port()
    carbon = FakeCarbon()
    daemon = start_daemon(spooling_relay(graphite_port, carbon.port))
    stream = GraphiteStream(graphite_port, "reload", paused=True)
    held = Spool(tmp_path / "held" / f"127_0_0_1_{carbon.port}", 1 << 20)
    try:
        stream.run_for(300)
        config = yaml.safe_load(daemon.config_path.read_text())
        config["forwarders"]["routes"]["spool_dir"] = str(tmp_path / "held")
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("starting its previous section again")
        stream.run_for(300)
        total = stream.stop()
        wait_for(lambda: len(carbon.snapshot()) >= total, what="every line delivered")
        time.sleep(0.3)
        assert numbers(carbon) == list(range(total))
        assert "is not running" not in "".join(daemon.stderr)
        assert daemon.stop() == 0
    finally:
        held.close()
        stream.stop()
        carbon.close()


def test_a_reload_that_changes_state_dir_keeps_the_running_spool_where_it_is(
        start_daemon: Any, tmp_path: Path) -> None:
    """``state_dir`` changes only on restart: a reload naming another one must neither rebuild
    the forwarders nor open spools under the new directory (they would split one spool in
    two, and the daemon says the key was not applied)."""
    graphite_port = free_port()
    config = spooling_relay(graphite_port, free_port())
    daemon = start_daemon(config)
    elsewhere = tmp_path / "elsewhere"
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["state_dir"] = str(elsewhere)
    daemon.config_path.write_text(yaml.safe_dump(settings))
    reload(daemon, 1)
    log = "".join(daemon.stderr)
    assert "change only on restart: state_dir" in log
    assert "kept routes" in log, log
    assert not elsewhere.exists()
    assert daemon.stop() == 0
