#!/usr/bin/env bash
# The main job on an embedded default. Sets up .venv if needed, starts pystatsd with a Kafka
# forwarder against an embedded Kafka-protocol broker (etc/embedded-kafka.conf: UDP and TCP on
# 127.0.0.1:5090, broker on 127.0.0.1:9092, topic "metrics", a flush every 5 s), and prints
# every message as it lands in the topic. Ctrl-C stops both cleanly.
#
# With arguments, runs pystatsd alone in the foreground with them (e.g. -c FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pystatsd "$@"
fi

# Its own session, so a Ctrl-C reaches it once, as the TERM sent by stop() below.
setsid .venv/bin/pystatsd -c etc/embedded-kafka.conf &
daemon=$!
tail_pid=
stop() {
    trap - INT TERM EXIT
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
    kill -TERM "$daemon" 2>/dev/null && wait "$daemon"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT
# The topic appears with the first flush; the tail waits for it.
.venv/bin/python tools/kafka_tail.py --bootstrap 127.0.0.1:9092 --topic metrics \
    --from-beginning &
tail_pid=$!
wait "$daemon"
