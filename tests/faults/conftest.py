"""The fault-injection tier: the real daemon as a subprocess, driven the way each failure
happens (a stopped process, a flood of clients, a low file limit, a stop mid-stream), with the
exact counts asserted: sent, aggregated, dropped by the kernel, refused, cut."""

from __future__ import annotations

import resource
import subprocess
from typing import Any

import pytest
from fault_helpers import DaemonProcess


@pytest.fixture
def start_fault_daemon(start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``start(config, nofile=None)``: ``start_daemon``, optionally under an open-file limit
    (``ulimit -n``, soft and hard) set in the child before it runs Python."""
    real_popen = subprocess.Popen

    def start(config: dict[str, Any], nofile: int | None = None) -> DaemonProcess:
        def popen(args: Any, **kwargs: Any) -> Any:
            if nofile is not None:
                limits = (nofile, nofile)
                kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return real_popen(args, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", popen)
        try:
            daemon: DaemonProcess = start_daemon(config)
        finally:
            monkeypatch.setattr(subprocess, "Popen", real_popen)
        return daemon

    return start
