"""A TCP proxy on 127.0.0.1 that delays every chunk a client sends (tests only): a slow network
between one worker and S3, so that a task's uploads take long enough to kill the worker among them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def _pipe(source: socket.socket, target: socket.socket, delay: float) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            if delay:
                time.sleep(delay)
            target.sendall(chunk)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def slow_proxy(upstream_port: int, delay: float) -> Iterator[int]:
    """Yield the port of a proxy to 127.0.0.1:``upstream_port`` that waits ``delay`` s before
    forwarding each chunk from the client (answers pass at full speed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=_pipe, args=(client, upstream, delay), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client, 0.0), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stopping.set()
        listener.close()
