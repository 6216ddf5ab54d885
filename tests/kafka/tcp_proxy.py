"""A loopback TCP proxy the outage tests cut and restore, standing between producer and broker.

``cut()`` is a clean outage: it stops passing client bytes on, lets the broker's answers to what
already reached it come back, then closes every connection and refuses new ones until
``restore()``. So a request either reached the broker and got its answer, or never reached it:
what the test measures is the forwarder's buffering, spooling and resending, not whether the
broker de-duplicates retried batches."""

from __future__ import annotations

import selectors
import socket
import threading
import time


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._refusing = False
        self.accepted = 0  # connections taken through to the broker
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(0.05):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    if source is client and not self._forwarding.is_set():
                        continue  # paused: leave the client's bytes unread
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
                if not self._forwarding.is_set():
                    time.sleep(0.01)
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()

    def cut(self) -> None:
        self._forwarding.clear()
        self._refusing = True
        time.sleep(0.5)  # answers to requests that already reached the broker come back
        self._drop_connections()

    def _drop_connections(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        self._refusing = False
        self._forwarding.set()

    def close(self) -> None:
        """Stop at once: no answers are awaited (the test is over), and the listener is shut
        down before it is closed, since a close alone does not wake the blocked ``accept``
        (its thread's join would wait out its 2 s)."""
        self._closed.set()
        self._forwarding.clear()
        self._refusing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._drop_connections()
        for thread in self._threads:
            thread.join(2)
