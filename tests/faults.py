"""Fault injection for tests: a storage endpoint that can be taken away and given back.

``OutageProxy`` stands between the jobs and the test S3 server (a plain TCP relay on 127.0.0.1). Cutting
it resets every open connection and, until it is restored, every new one as soon as it is made: what a
client sees when an object store goes away behind its address. It counts the connections it turned away,
so a test knows the job really met the outage. The S3 server behind it keeps its objects, as a real
store does through an outage. Given ``latency_s`` it holds every piece of data it relays for that long, as a
distant store does: a test that must catch a job mid-way gets a wide window however fast the job's work is.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class OutageProxy:
    """A TCP relay ``127.0.0.1:port`` → ``target`` that can be cut and restored."""

    def __init__(self, target_port: int, latency_s: float = 0.0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._down = False
        self.turned_away = 0  # connections reset while cut
        self.relayed = 0  # connections relayed to the server
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by close()
                return
            if self._down:
                self.turned_away += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._connections.update((client, upstream))
                self.relayed += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.latency_s:
                    time.sleep(self.latency_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.difference_update((src, dst))
            _close(src, dst)

    def cut(self) -> None:
        """Stop answering: reset the open connections and, until ``restore``, every new one."""
        self._down = True
        with self._lock:
            open_now = list(self._connections)
            self._connections.clear()
        _reset(*open_now)

    def restore(self) -> None:
        """Answer again."""
        self._down = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def _reset(*sockets: socket.socket) -> None:
    """Close with a TCP reset (linger 0), as a server that goes away does: the peer sees an error, not a hang."""
    for s in sockets:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
