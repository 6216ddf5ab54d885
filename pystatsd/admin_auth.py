"""Who may change state through the admin interfaces.

Reading is open on every admin listener (they are loopback by default). Changing state
(``del*``, ``health up|down``, ``loglevel LEVEL``, the HTTP POSTs) needs the configured
``admin.token`` unless the connection came through the 0600 console socket, which only the
daemon's user and root can open. With no token configured, TCP and HTTP cannot change state
at all: a console on a reachable address must never be an open door by default."""

from __future__ import annotations

import hmac


class TokenGuard:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def configured(self) -> bool:
        return self._token is not None

    def accepts(self, presented: str | None) -> bool:
        """Whether ``presented`` is the token (compared in constant time)."""
        if self._token is None or presented is None:
            return False
        return hmac.compare_digest(self._token, presented.encode())

    def refusal(self, trusted: bool, authorized: bool) -> str | None:
        """Why a state-changing command is refused, or None when it may run."""
        if trusted or authorized:
            return None
        if self._token is None:
            return "state-changing commands need admin.token, and none is configured"
        return "state-changing commands need the admin token"
