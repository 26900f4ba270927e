"""An upstream on loopback that answers every UDP query with scripted bytes, in order.

For hostile-upstream tests: each query gets `replies` (the first a crafted message, say, the
last the real answer), each with the query's ID written over its own, a few milliseconds
apart, so the server under test must pick the right one or refuse them all.
"""

from __future__ import annotations

import socket
import threading
import time


class CannedUpstream:
    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            for reply in list(self.replies):
                self._sock.sendto(query[:2] + reply[2:], addr)
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
