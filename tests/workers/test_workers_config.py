"""The ``workers`` key: a count or ``auto``; what it cannot be combined with stops the start
with one line naming it."""

from __future__ import annotations

import os

import pytest

from pystatsd.config import ConfigError, build_config
from pystatsd.workers import worker_count


def test_auto_is_the_cpus_the_daemon_may_run_on() -> None:
    assert worker_count(build_config({"workers": "auto"})) == len(os.sched_getaffinity(0))
    assert worker_count(build_config({})) == 1
    assert worker_count(build_config({"workers": 3})) == 3


@pytest.mark.parametrize("value", [0, -2, "two", 1.5])
def test_a_bad_count_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config({"workers": value})
    assert raised.value.errors == [f"workers: {value!r} is not integer >= 1 or auto"]


def test_relay_forwarders_need_one_worker() -> None:
    relay = {"statsd_relay": {"groups": [{"backends": [{"host": "127.0.0.1", "port": 1}]}]}}
    build_config({"workers": 1, "forwarders": relay})
    with pytest.raises(ConfigError) as raised:
        build_config({"workers": 2, "forwarders": relay})
    (line,) = raised.value.errors
    assert line.startswith("workers: more than 1 needs mode aggregate and no relay forwarder")
    assert line.endswith(": statsd_relay")
