"""The ``carbon_routes`` section's JSON Schema: carbon-relay-ng's config in snake case."""

from __future__ import annotations

from typing import Any

from forwarders.schema import backend_queue_lines, reconnect_properties, relay_queue_size

__all__ = ["CONFIG_SCHEMA"]


def _matcher_properties(what: str) -> dict[str, Any]:
    text = {"prefix": "starts with", "not_prefix": "does not start with",
            "sub": "contains", "not_sub": "does not contain",
            "regex": "matches (unanchored; Python `re`)",
            "not_regex": "does not match"}
    return {key: {"type": "string", "description": f"{what} a path that {meaning} this."}
            for key, meaning in text.items()}


_DESTINATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["address"],
    "properties": {
        "address": {"type": "string", "description": "`host:port` of a carbon plaintext or "
                                                     "pickle receiver (`[v6]:port` for IPv6)."},
        "instance": {"type": "string", "description": "The instance name on carbon's hash ring "
                                                      "(carbon's `host:port:instance`)."},
        "pickle": {"type": "boolean", "default": False,
                   "description": "Send carbon's pickle protocol instead of plaintext."},
        "queue_lines": backend_queue_lines("Lines", "for this destination"),
        "spool": {"type": "boolean", "default": False,
                  "description": "Keep lines on disk while the destination is down (and at "
                                 "shutdown), and send them when it is back."},
        "spool_max_bytes": {"type": "integer", "minimum": 1, "default": 256 << 20,
                            "description": "Size bound of this destination's spool; past it "
                                           "new lines are dropped and counted."},
        **_matcher_properties("Only for sends by `send_all_match` and `send_first_match`:"),
    },
}

_ROUTE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key", "type", "destinations"],
    "properties": {
        "key": {"type": "string", "description": "The route's name."},
        "type": {"enum": ["send_all_match", "send_first_match", "consistent_hashing",
                          "consistent_hashing_v2"],
                 "description": "send_all_match: every matching destination. "
                                "send_first_match: the first matching one. consistent_hashing: "
                                "carbon's ring as carbon-relay-ng's `consistentHashing` (carbon "
                                "<= 0.9.12). consistent_hashing_v2: carbon's ring as "
                                "graphite-carbon 1.x places keys."},
        "replication_factor": {"type": "integer", "minimum": 1, "default": 1,
                               "description": "Consistent hashing: distinct destinations per "
                                              "key (carbon's REPLICATION_FACTOR)."},
        "destinations": {"type": "array", "minItems": 1, "items": _DESTINATION,
                         "description": "Where the route sends."},
        **_matcher_properties("The route takes"),
    },
}

_REWRITER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["old", "new"],
    "properties": {
        "old": {"type": "string", "description": "Text to replace, or `/regex/`."},
        "new": {"type": "string", "description": "The replacement; with a regex it may name "
                                                 "groups as `$1`, `${1}`, `${name}`."},
        "not": {"type": "string", "description": "Leave paths containing this (or matching "
                                                 "`/regex/`) alone."},
        "max": {"type": "integer", "minimum": -1, "default": -1,
                "description": "Replacements per path; -1: all."},
    },
}

_AGGREGATOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["function", "regex", "format"],
    "properties": {
        "function": {"enum": ["sum", "avg", "min", "max", "last", "count"],
                     "description": "How one bucket's values become one."},
        "format": {"type": "string", "description": "The output path; `$1`, `${name}` are the "
                                                    "regex's groups."},
        "interval": {"type": "integer", "minimum": 1, "default": 60,
                     "description": "Seconds a bucket spans (timestamps are quantized down)."},
        "wait": {"type": "number", "minimum": 0, "default": 120,
                 "description": "Seconds after a bucket's timestamp before it is emitted."},
        "drop_raw": {"type": "boolean", "default": False,
                     "description": "Do not route the datapoints this aggregator takes."},
        "max_buckets": {"type": "integer", "minimum": 1, "default": 100000,
                        "description": "Open buckets at most; datapoints for new ones past it "
                                       "are dropped and counted."},
        **_matcher_properties("Aggregate"),
        "regex": {"type": "string", "description": "Which paths, and the groups `format` "
                                                   "uses."},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["routes"],
    "properties": {
        "queue_size": relay_queue_size(4096),
        "blocklist": {"type": "array", "items": {"type": "string"}, "default": [],
                      "description": "carbon-relay-ng's `\"<type> <expression>\"` entries "
                                     "(prefix, notPrefix, sub, notSub, regex, notRegex): "
                                     "matching paths are dropped and counted."},
        "rewriters": {"type": "array", "items": _REWRITER, "default": [],
                      "description": "Renames applied in order before aggregation and routing."},
        "aggregators": {"type": "array", "items": _AGGREGATOR, "default": [],
                        "description": "carbon-relay-ng aggregators."},
        "routes": {"type": "array", "minItems": 1, "items": _ROUTE,
                   "description": "Every route whose matcher takes a path gets it."},
        "spool_dir": {"type": "string", "description": "Directory of the destinations' spools "
                                                       "(one subdirectory each); default "
                                                       "`<state_dir>/spool/<forwarder name>`."},
        **reconnect_properties(backoff_min=0.5, backoff_max=10.0,
                               backoff_max_note=" (carbon-relay-ng's `reconn`: 10 s)"),
    },
}
