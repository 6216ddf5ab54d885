"""The relay's config section is checked before anything starts, each error naming its key."""

from __future__ import annotations

import pytest

from forwarders.base import ForwarderContext
from forwarders.statsd_relay import StatsdRelayForwarder
from pystatsd.config import ConfigError, build_config


def _relay_config(**section: object) -> dict:
    return {"mode": "relay", "forwarders": {"relay": {"type": "statsd_relay", **section}}}


def test_defaults_are_filled_from_the_schema():
    config = build_config(_relay_config(groups=[{"backends": ["10.0.0.1:8125"]}]))
    section = config["forwarders"]["relay"]
    assert section["max_datagram_bytes"] == 1432
    assert section["hash_key"] == "name"
    assert section["groups"][0]["hash"] == "jump"
    assert section["groups"][0]["dead_backend_policy"] == "hold"


@pytest.mark.parametrize(("section", "message"), [
    ({"groups": [{"backends": ["a:1"], "hsah": "jump"}]},
     "forwarders.relay.groups[0].hsah: unknown key"),
    ({"groups": [{"backends": ["a:1"], "hash": "md5"}]},
     "forwarders.relay.groups[0].hash: 'md5' is not one of"),
    ({"groups": [{"backends": ["no-port"]}]}, "forwarders.relay.groups[0].backends[0]"),
    ({"groups": []}, "forwarders.relay.groups"),
    ({}, "forwarders.relay.groups: required"),
])
def test_bad_sections_are_refused_naming_the_key(section, message):
    with pytest.raises(ConfigError) as raised:
        build_config(_relay_config(**section))
    assert any(message in error for error in raised.value.errors), raised.value.errors


@pytest.mark.parametrize(("group", "message"), [
    ({"filter": "(unclosed", "backends": ["a:1"]}, "groups[0].filter"),
    ({"hash": "jump", "backends": [{"host": "a", "port": 1, "weight": 3}]}, "ketama"),
])
def test_what_the_schema_cannot_see_fails_at_construction(group, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        StatsdRelayForwarder("relay", {"groups": [group]}, ForwarderContext())
