"""JSON Schema of the ``statsd_relay`` forwarder's section (the reference of its options)."""

from __future__ import annotations

from typing import Any

from forwarders.schema import reconnect_properties, relay_queue_size

__all__ = ["BACKEND_DEFAULTS", "CONFIG_SCHEMA"]

_BACKEND_STRING = r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):[0-9]{1,5}(:(udp|tcp|UDP|TCP))?$"

_BACKEND_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "port"],
    "properties": {
        "host": {"type": "string", "minLength": 1,
                 "description": "Host name or address (IPv4 or IPv6) of the backend."},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                 "description": "Port of the backend."},
        "protocol": {"enum": ["udp", "tcp"], "default": "udp",
                     "description": "udp (lines packed into datagrams) or tcp (a stream)."},
        "instance": {"type": "string",
                     "description": "Only makes an entry distinct: jjneely's INSTANCE (not "
                     "hashed), or carbon's instance (hashed by the `carbon` scheme)."},
        "weight": {"type": "integer", "minimum": 1, "default": 1,
                   "description": "`ketama` only: this entry's share of the ring (statsite-proxy "
                   "servers file weight). Other schemes weigh by repeating an entry."},
        "health_port": {"type": "integer", "minimum": 1, "maximum": 65535,
                        "description": "TCP port probed by the health check (e.g. Etsy "
                        "statsd's management port 8126). Without it a TCP backend is probed "
                        "on its own port and a UDP backend only by its send errors."},
    },
}

BACKEND_DEFAULTS: dict[str, Any] = {key: spec["default"] for key, spec in
                                    _BACKEND_OBJECT["properties"].items() if "default" in spec}
"""Defaults of a backend given as an object (kept here, beside the schema that declares them)."""

_GROUP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["backends"],
    "properties": {
        "name": {"type": "string", "description": "Name of the group in stats and logs "
                 "(default: group<index>)."},
        "hash": {"enum": ["jump", "shard_map", "ketama", "carbon"], "default": "jump",
                 "description": "jump - FNV-1a 64 + jump hash (jjneely/statsrelay). shard_map - "
                 "murmur3 modulo the shard count (lyft/statsrelay). ketama - libketama's "
                 "weighted ring (statsite-proxy). carbon - graphite carbon's ring."},
        "backends": {
            "type": "array", "minItems": 1,
            "description": "Slots of the hash, in order. A string is `host:port` or "
            "`host:port:udp|tcp` (`[v6addr]:port` for IPv6). The same backend listed again is "
            "one destination with more slots (more weight).",
            "items": {"oneOf": [{"type": "string", "pattern": _BACKEND_STRING},
                                _BACKEND_OBJECT]},
        },
        "prefix": {"type": "string", "default": "",
                   "description": "Prepended to the metric name as is (no dot added)."},
        "suffix": {"type": "string", "default": "",
                   "description": "Appended to the metric name as is."},
        "append_tags": {"type": "string", "default": "",
                        "description": "DogStatsD tags `k:v,k2:v2` added to every line of this "
                        "group (jjneely's -metrics-tags)."},
        "hash_rewritten_name": {
            "type": "boolean", "default": False,
            "description": "false - hash the name as received (lyft). true - hash it after "
            "prefix and suffix (jjneely's -metrics-prefix)."},
        "filter": {"type": "string", "format": "regex",
                   "description": "Regular expression (Python `re`, searched in the name): "
                   "only matching metrics enter this group."},
        "blacklist": {"type": "string", "format": "regex",
                      "description": "Regular expression: matching metrics are kept out of "
                      "this group."},
        "dead_backend_policy": {
            "enum": ["hold", "reroute"], "default": "hold",
            "description": "hold - a dead backend keeps its metrics queued (dropped and counted "
            "once its queue is full); no metric ever changes owner. reroute - while a backend is "
            "dead its metrics go to their next owner by the scheme's own fallback (logged once "
            "per change, counted as `rerouted_lines`); they come back when it recovers."},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "properties": {
        "queue_size": relay_queue_size(20000),
        "groups": {"type": "array", "minItems": 1, "items": _GROUP,
                   "description": "Destination groups: every line goes to one backend of "
                   "every group that accepts it (lyft's duplicate_to)."},
        "hash_key": {"enum": ["name", "name_and_tags"], "default": "name",
                     "description": "name - the metric name only (compatible with the relays "
                     "replaced). name_and_tags - name plus sorted DogStatsD tags, so the series "
                     "of one name spread over the backends."},
        "json_lines": {"enum": ["convert", "reject"], "default": "convert",
                       "description": "convert - a JSON object line is decoded and relayed as a "
                       "DogStatsD line. reject - it is dropped and counted as not relayable."},
        "max_datagram_bytes": {"type": "integer", "minimum": 64, "maximum": 65507,
                               "default": 1432,
                               "description": "Largest UDP datagram sent to a backend."},
        "queue_bytes": {"type": "integer", "minimum": 1024, "default": 16777216,
                        "description": "Send queue bound of each backend, in bytes."},
        "send_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                          "default": 0.002,
                          "description": "Seconds between the sender thread's rounds: the "
                          "longest a line waits before it is packed and sent."},
        **reconnect_properties(backoff_min=0.1, backoff_max=5.0, key_prefix="reconnect_",
                               connects="a TCP connect (or health probe)",
                               retry="retrying a backend"),
        "dead_after": {"type": "number", "minimum": 0, "default": 1.0,
                       "description": "Seconds of failed sends or connects after which a "
                       "backend counts as dead (see dead_backend_policy)."},
        "health_check_interval": {"type": "number", "minimum": 0, "default": 0,
                                  "description": "Seconds between TCP connect probes of each "
                                  "backend (0 - no probes; failures of sending still count)."},
        "max_route_cache": {"type": "integer", "minimum": 1000, "default": 1000000,
                            "description": "Distinct hash keys whose owners are remembered; "
                            "the cache starts over when full."},
    },
}
