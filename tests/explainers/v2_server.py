"""A small Open Inference Protocol (V2 REST) server on 127.0.0.1, with faults on demand (tests only).

It serves ``GET /v2/models/{name}`` (metadata), ``GET /v2/models/{name}/ready`` and
``POST /v2/models/{name}/infer`` for a numpy function, over real HTTP in a thread of the test
process. ``faults`` is a queue the test fills: each request to ``/infer`` takes the next fault,
if any: ``("status", 500)``, ``("retry-after", seconds)`` (429 with Retry-After), ``("slow", s)``
(answer after s seconds), ``("drop", 0)`` (close the connection without an answer) or
``("garbage", 0)`` (200 with a body that is not V2). The real servers (MLServer) are used
where faults are not needed.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


class V2Server:
    def __init__(
        self,
        name: str,
        predict: Callable[[np.ndarray], np.ndarray],
        metadata: dict[str, Any] | None = None,
        output: str = "predict_proba",
    ) -> None:
        self.name = name
        self.predict = predict
        self.metadata = (
            metadata
            if metadata is not None
            else {"name": name, "platform": "test", "inputs": [], "outputs": []}
        )
        self.output = output
        self.faults: collections.deque[tuple[str, float]] = collections.deque()
        self.infer_requests = 0
        self.headers: dict[str, str] = {}  # of the last /infer request
        self.rows = 0
        self.max_concurrent = 0
        self._active = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == f"/v2/models/{server.name}":
                    self._send(200, server.metadata)
                elif self.path == f"/v2/models/{server.name}/ready":
                    self._send(200, {})
                else:
                    self._send(404, {"error": f"no model at {self.path}"})

            def do_POST(self) -> None:
                server.headers = dict(self.headers.items())
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                if self.path != f"/v2/models/{server.name}/infer":
                    self._send(404, {"error": "not found"})
                    return
                with server._lock:
                    server.infer_requests += 1
                    fault = server.faults.popleft() if server.faults else None
                    server._active += 1
                    server.max_concurrent = max(server.max_concurrent, server._active)
                try:
                    if fault is not None:
                        kind, value = fault
                        if kind == "status":
                            self._send(int(value), {"error": "injected"})
                            return
                        if kind == "retry-after":
                            self._send(429, {"error": "slow down"}, {"Retry-After": str(int(value))})
                            return
                        if kind == "drop":
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                            return
                        if kind == "garbage":
                            self._send(200, b"<html>proxy error</html>")
                            return
                        if kind == "slow":
                            time.sleep(value)
                    tensor = payload["inputs"][0]
                    rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
                    out = np.asarray(server.predict(rows), dtype=np.float64)
                    with server._lock:
                        server.rows += rows.shape[0]
                    self._send(
                        200,
                        {
                            "model_name": server.name,
                            "outputs": [
                                {
                                    "name": server.output,
                                    "shape": list(out.shape),
                                    "datatype": "FP64",
                                    "data": out.ravel().tolist(),
                                }
                            ],
                        },
                    )
                finally:
                    with server._lock:
                        server._active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{self.name}"

    def __enter__(self) -> V2Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
