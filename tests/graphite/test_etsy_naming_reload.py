"""A reload that turns ``naming: etsy`` on or off turns Etsy's extra timer statistics on or off
with it: the daemon asks the running forwarders again (``Forwarder.needed_stats``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from carbon_servers import FakeCarbon, wait_for

pytestmark = pytest.mark.integration


def config(carbon: FakeCarbon, naming: str) -> dict[str, Any]:
    return {"flush_interval": 1, "percentiles": [90],
            "self_metrics": {"enabled": False},
            "forwarders": {"carbon": {"type": "graphite", "port": carbon.port, "naming": naming,
                                      "tags": "omit"}}}


def test_a_reload_to_etsy_naming_adds_etsys_timer_paths_and_back(start_daemon: Any,
                                                                  tmp_path: Path) -> None:
    carbon = FakeCarbon()
    try:
        daemon = start_daemon(config(carbon, "plain"))

        def flushed(name: str) -> dict[str, float]:
            daemon.send_udp(b"\n".join(b"%s:%d|ms" % (name.encode(), v) for v in range(1, 11)))
            wait_for(lambda: any(name in p for p, _, _ in carbon.snapshot()), 20, name)
            time.sleep(0.3)  # the rest of that flush's payload
            return {p: v for p, v, _ in carbon.snapshot() if name in p}

        assert set(flushed("before")) == {f"before.{stat}" for stat in (
            "count", "sum", "min", "max", "mean", "median", "stddev", "p90")}

        for reloads, (naming, name) in enumerate((("etsy", "during"), ("plain", "after")), 1):
            daemon.config_path.write_text(yaml.safe_dump(
                {**config(carbon, naming), "bind_port": daemon.port,
                 "state_dir": str(tmp_path / "state")}))
            daemon.signal(signal.SIGHUP)
            wait_for(lambda n=reloads: sum("reloaded" in line for line in daemon.stderr) == n,
                     20, "the reload")
            got = flushed(name)
            if naming == "etsy":
                assert got["stats.timers.during.mean_90"] == 5.0
                assert got["stats.timers.during.sum_squares"] == 385.0
            else:
                assert not [path for path in got if "mean_90" in path or "stats." in path]
    finally:
        carbon.close()
