"""Agent tags: the tags this daemon adds to every sample (config ``agent.tags``).

The old client library merged the agent's tags into each metric itself and let them override
the metric's own; here the daemon does it, so every client gets them, and ``tag_precedence``
says which side wins a shared key."""

from __future__ import annotations

from collections.abc import Mapping

from pystatsd.sample import Tags, make_tags

PRECEDENCES = ("agent", "client")


class Tagger:
    """Merges the agent's tags into a sample's tags.

    ``precedence`` is ``"agent"`` (the agent's value wins a shared key, as the old client
    library did) or ``"client"`` (the metric's own value wins)."""

    def __init__(self, agent_tags: Mapping[str, object], precedence: str) -> None:
        if precedence not in PRECEDENCES:
            raise ValueError(f"tag precedence must be one of {PRECEDENCES}, not {precedence!r}")
        self.agent_tags: Tags = make_tags(dict(agent_tags))
        self._agent_wins = precedence == "agent"

    def apply(self, tags: Tags) -> Tags:
        """Given a sample's tags (sorted), return them with the agent's tags merged in, sorted."""
        if not self.agent_tags:
            return tags
        if not tags:
            return self.agent_tags
        if self._agent_wins:
            merged = dict(tags)
            merged.update(self.agent_tags)
        else:
            merged = dict(self.agent_tags)
            merged.update(tags)
        return tuple(sorted(merged.items()))
