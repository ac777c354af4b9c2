"""A fault-injecting TCP proxy on loopback, put in front of the S3 test server.

Per new connection it either drops it at once, answers `503 SlowDown` (S3's throttling reply) and closes, or
pipes bytes both ways to the real server. Faults are scheduled by connection count, so tests are repeatable.
"""

from __future__ import annotations

import socket
import threading

SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: 109\r\n\r\n"
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Reduce rate</Message></Error>\n"
)


class FaultyProxy:
    def __init__(self, upstream_port: int, drop_first: int = 0, slow_down_first: int = 0, fail_after: int | None = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.drop_first = drop_first  # connections 1..drop_first are closed without a reply
        self.slow_down_first = slow_down_first  # the next ones get 503 SlowDown
        self.fail_after = fail_after  # from this connection on, everything is dropped (the server "stopped")
        self.connections = 0
        self.faults = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()  # live sockets, closed by stop(): the server "goes away"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            n = self.connections
        if n <= self.drop_first or (self.fail_after is not None and n > self.fail_after):
            self.faults += 1
            client.close()
            return
        if n <= self.drop_first + self.slow_down_first:
            self.faults += 1
            try:
                client.recv(65536)
                client.sendall(SLOW_DOWN)
            finally:
                client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.update((client, upstream))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._thread.join(timeout=5)
