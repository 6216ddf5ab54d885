"""End to end: the real daemon (``python -m pystatsd -c FILE``) receives metrics over UDP and
its Kafka forwarder delivers them; a daemon stopped during an outage sends its spool after a
restart; with no kafka_broker it runs its own embedded broker."""

from __future__ import annotations

import re
from collections import defaultdict

import orjson
import pytest

from forwarders.kafka.reading import read_topic

pytestmark = pytest.mark.integration

LINES = [b"e2e.hits:3|c|#env:test", b"e2e.hits:4|c|#env:test", b"e2e.temp:21.5|g",
         b'{"metric_name":"e2e.trace","metric_type":"trace","stage":"init"}']


def totals(messages, field: str = "value") -> dict[str, float]:
    """Per key of the e2e series: the sum of the legacy events' values (self-metrics left out)."""
    summed: dict[str, float] = defaultdict(float)
    for message in messages:
        key = message.key.decode()
        if key.startswith("e2e."):
            summed[key] += orjson.loads(message.value)[field]
    return dict(summed)


def daemon_config(section: dict) -> dict:
    return {"flush_interval": 1, "shutdown_timeout": 5, "forwarders": {"kafka": section}}


def test_metrics_sent_over_udp_arrive_in_kafka(start_daemon, kafka_bootstrap, topic):
    daemon = start_daemon(daemon_config({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                         "kafka_apikey": "K", "kafka_tenant_id": "T"}))
    daemon.send_udp(*LINES)
    assert daemon.stop() == 0, "".join(daemon.stderr)
    messages = read_topic(kafka_bootstrap, topic)
    assert totals(messages) == {"e2e.hits,env=test": 7, "e2e.temp": 21.5,
                                "e2e.trace,stage=init": 1}
    event = orjson.loads(next(m.value for m in messages if m.key == b"e2e.temp"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event.pop("@timestamp"))
    assert event == {"name": "e2e.temp", "value": 21.5, "apikey": "K", "tenant_id": "T",
                     "@version": "1"}


def test_a_daemon_stopped_during_an_outage_sends_its_spool_after_restart(
        start_daemon, proxied_broker, topic):
    broker, proxy = proxied_broker
    config = daemon_config({"kafka_broker": broker.bootstrap, "kafka_topic": topic})
    config["shutdown_timeout"] = 1  # the stop in the outage spools once this deadline passes
    proxy.cut()
    first = start_daemon(config)
    first.send_udp(*LINES)
    assert first.stop() == 0
    assert "spooled" in "".join(first.stderr)
    proxy.restore()
    second = start_daemon(config)
    second.wait_for_log("spooled", timeout=10)  # "... bytes spooled ... from before"
    assert second.stop() == 0
    assert totals(read_topic(broker.bootstrap, topic)) == {
        "e2e.hits,env=test": 7, "e2e.temp": 21.5, "e2e.trace,stage=init": 1}


def test_without_kafka_broker_the_daemon_runs_an_embedded_broker(start_daemon, topic):
    from forwarders.kafka.embedded_broker import free_port

    listen = f"127.0.0.1:{free_port()}"
    daemon = start_daemon(daemon_config({"kafka_topic": topic, "format": "influx",
                                         "embedded_broker_listen": listen}))
    line = daemon.wait_for_log("embedded")
    assert listen in line
    daemon.send_udp(b"e2e.hits:5|c|#env:demo")
    # the embedded broker lives as long as the daemon: read while it runs
    deadline_messages = []
    for _ in range(20):
        deadline_messages = [m for m in read_topic(listen, topic, timeout=3, idle=0.5)
                             if m.key == b"e2e.hits,env=demo"]
        if deadline_messages:
            break
    assert daemon.stop() == 0
    assert deadline_messages[0].value.startswith(b"e2e.hits,env=demo count=5.0,rate=")


def test_the_embedded_broker_never_uses_a_port_somebody_else_holds(make_forwarder, topic):
    """Found trying the quick start with 127.0.0.1:9092 taken: the forwarder logged that it had
    started a broker and sent the metrics to the server that was already there."""
    import os
    import socket

    import pytest

    from forwarders.kafka import KafkaConfigError

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        listen = f"127.0.0.1:{squatter.getsockname()[1]}"
        forwarder = make_forwarder({"kafka_topic": topic, "embedded_broker_listen": listen},
                                   start=False)
        with pytest.raises(KafkaConfigError, match=(
                rf"embedded_broker_listen: {listen} is already in use by pid {os.getpid()} ")):
            forwarder.start()
        assert forwarder.close(1) == 0
        assert forwarder._embedded is None  # no broker left running


def test_two_sections_cannot_share_one_embedded_broker_port(make_forwarder, topic):
    from forwarders.kafka import KafkaConfigError
    from forwarders.kafka.embedded_broker import free_port

    listen = f"127.0.0.1:{free_port()}"
    first = make_forwarder({"kafka_topic": topic, "embedded_broker_listen": listen})
    second = make_forwarder({"type": "kafka", "kafka_topic": topic,
                             "embedded_broker_listen": listen}, name="kafka2", start=False)
    try:
        second.start()
    except KafkaConfigError as exc:
        assert f"pid {first._embedded.pid} (" in str(exc)  # names the broker that holds it
    else:
        raise AssertionError("a second broker was started on a port already in use")
    finally:
        second.close(1)
    assert first.close(2) == 0


def test_a_reload_keeps_the_embedded_broker_and_loses_nothing(start_daemon, topic):
    import signal
    import time

    from forwarders.kafka.embedded_broker import free_port

    listen = f"127.0.0.1:{free_port()}"
    daemon = start_daemon(daemon_config({"kafka_topic": topic, "format": "json",
                                         "embedded_broker_listen": listen}))
    daemon.send_udp(b"e2e.hits:1|c|#env:reload")
    time.sleep(1.2)  # let a flush take it
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    daemon.send_udp(b"e2e.hits:2|c|#env:reload")
    total = 0.0
    for _ in range(20):
        messages = read_topic(listen, topic, timeout=3, idle=0.5)
        total = sum(orjson.loads(m.value)["stats"]["count"] for m in messages
                    if m.key == b"e2e.hits,env=reload")
        if total == 3:
            break
    assert daemon.stop() == 0, "".join(daemon.stderr)
    assert total == 3
    assert "".join(daemon.stderr).count("started an embedded") == 1


def test_an_unusable_spool_dir_stops_the_daemon_with_one_line_naming_the_key(start_daemon,
                                                                            tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    daemon = start_daemon(daemon_config({"kafka_broker": "127.0.0.1:1", "kafka_topic": "t",
                                         "spool_dir": str(blocker / "spool")}), ready=False)
    assert daemon.proc.wait(20) == 1
    daemon.kill()  # joins the output readers
    assert "cannot start: forwarders.kafka.spool_dir: cannot use" in "".join(daemon.stderr)


def test_client_text_that_would_be_influx_syntax_is_refused_counted_and_the_rest_delivered(
        start_daemon, kafka_bootstrap, topic):
    from kafka_helpers import wait_status

    daemon = start_daemon(daemon_config({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                         "format": "influx"}))
    forged = [  # a newline in a tag value would be a second, forged line; '#' a comment
        b'{"metric_name":"e2e.cpu","metric_type":"gauge","value":1,"host":"a\\nforged v=9"}',
        b'{"metric_name":"#e2e.comment","metric_type":"gauge","value":2}',
    ]
    daemon.send_udp(*forged, b'{"metric_name":"e2e.ok","metric_type":"gauge","value":3,'
                              b'"host":"a b,c=d"}')
    wait_status(daemon, lambda s: s["unencodable"] >= 2)  # per flush: gauges are carried
    assert daemon.stop() == 0
    lines = [m.value.decode() for m in read_topic(kafka_bootstrap, topic)
             if m.key and m.key.startswith((b"e2e.", b"#"))]
    assert lines, "the good series was lost with the bad ones"
    for line in lines:  # one per flush, each the one good series, escaped
        assert line.startswith("e2e.ok,host=a\\ b\\,c\\=d value=3.0 ") and "\n" not in line
    assert "not sent as influx" in "".join(daemon.stderr)
