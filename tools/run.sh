#!/usr/bin/env bash
# The main job on an embedded default. Sets up .venv if needed, starts pystatsd with a Kafka
# forwarder on its embedded Kafka-protocol broker (etc/embedded-kafka.conf: UDP and TCP on
# 127.0.0.1:5090, broker on 127.0.0.1:9092, topic "metrics", a flush every 5 s), and prints
# every message as it lands in the topic, the daemon's own pystatsd.* series folded into one
# line per flush. Ctrl-C stops the daemon, which flushes a last time; that flush is shown
# before the script exits.
#
# If 127.0.0.1:9092 is taken by another process, the demo's broker listens on a free port
# instead (said on stderr): the demo never writes into a broker it did not start.
# PYSTATSD_DEMO_PORT and PYSTATSD_DEMO_BROKER_PORT override the two ports (the tests use them).
#
# With arguments, runs pystatsd alone in the foreground with them (e.g. -c FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pystatsd "$@"
fi
say() { echo "run.sh: $*" >&2; }

# The ports and topic of etc/embedded-kafka.conf, with the overrides; a free broker port when
# the wanted one is held by anybody. When anything differs from the file, a temporary copy
# with the ports filled in is what runs.
tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
read -r port broker topic wanted_broker < <(.venv/bin/python - etc/embedded-kafka.conf \
    "$tmpdir/embedded-kafka.conf" "${PYSTATSD_DEMO_PORT:-}" "${PYSTATSD_DEMO_BROKER_PORT:-}" \
    <<'PY'
import socket
import sys

import yaml

source, copy, port_override, broker_override = sys.argv[1:]
with open(source) as file:
    config = yaml.safe_load(file)
kafka = config["forwarders"]["kafka"]
in_file = (int(config["bind_port"]), int(kafka["embedded_broker_listen"].rpartition(":")[2]))
port = int(port_override or in_file[0])
wanted = int(broker_override or in_file[1])


def bindable(port: int) -> int:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return int(probe.getsockname()[1])


broker = bindable(wanted) or bindable(0)
if (port, broker) != in_file:
    config["bind_port"] = port
    kafka["embedded_broker_listen"] = f"127.0.0.1:{broker}"
    with open(copy, "w") as file:
        yaml.safe_dump(config, file, sort_keys=False)
print(port, broker, kafka["kafka_topic"], wanted)
PY
)
config=etc/embedded-kafka.conf
[ -f "$tmpdir/embedded-kafka.conf" ] && config=$tmpdir/embedded-kafka.conf
if [ "$broker" != "$wanted_broker" ]; then
    say "127.0.0.1:$wanted_broker is taken by another process; the demo's own broker will" \
        "listen on 127.0.0.1:$broker instead"
fi

# Its own session, so a Ctrl-C reaches it once, as the TERM sent by stop() below. (The tail,
# a background job of this script, ignores the terminal's SIGINT.)
setsid .venv/bin/pystatsd -c "$config" &
daemon=$!
tail_pid=
status=0
stop() {
    trap - EXIT
    trap 'kill -TERM "$daemon" 2>/dev/null' INT TERM  # a second Ctrl-C: the daemon exits now
    if kill -TERM "$daemon" 2>/dev/null; then
        wait "$daemon" || status=$?
    fi
    # The final flush reached the tail before the embedded broker stopped with the daemon;
    # SIGTERM makes the tail print what it has, then exit.
    if [ -n "$tail_pid" ]; then
        kill -TERM "$tail_pid" 2>/dev/null || true
        wait "$tail_pid" || true
    fi
    rm -rf "$tmpdir"
}
trap 'stop; exit "$status"' INT TERM
trap stop EXIT

# The broker starts with the daemon; the tail starts once it answers, and waits for the topic,
# which appears with the first flush.
for _ in $(seq 300); do
    kill -0 "$daemon" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$broker") 2>/dev/null && break
    sleep 0.1
done
if kill -0 "$daemon" 2>/dev/null; then
    say "pystatsd receives on UDP and TCP 127.0.0.1:$port; showing topic '$topic' of its" \
        "broker on 127.0.0.1:$broker. Ctrl-C stops it after a final flush."
    .venv/bin/python tools/kafka_tail.py --bootstrap "127.0.0.1:$broker" --topic "$topic" \
        --from-beginning --self-metrics summary &
    tail_pid=$!
fi
wait "$daemon" || status=$?
exit "$status"
