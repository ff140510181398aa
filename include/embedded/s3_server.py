"""A local S3-compatible server: moto in server mode, bound to 127.0.0.1 only.

Two ways to use it:

* in Python (tests, notebooks)::

      with start() as server:
          s3 = boto3.client("s3", endpoint_url=server.endpoint_url)

* detached, for the embedded Airflow setup::

      python -m include.embedded.s3_server start [--port 9000] [--ephemeral]
      python -m include.embedded.s3_server status
      python -m include.embedded.s3_server stop

  The detached server writes ``$XAC_HOME/run/s3.pid`` (JSON: pid, port, endpoint) and logs to
  ``$XAC_HOME/run/s3.log``. ``start`` is idempotent (prints the endpoint of the running server and exits 0),
  ``stop`` exits 0 when nothing runs, ``status`` exits 0 when running and 3 when not.

Persistence: moto keeps all state in memory, so a plain restart loses every bucket. When a ``state_dir``
is given (the CLI uses ``$XAC_HOME/s3`` unless ``--ephemeral``), the server runs with moto's *recorder*
(``MOTO_ENABLE_RECORDING``/``MOTO_RECORDER_FILEPATH``): every request is appended to
``<state_dir>/moto-recording.jsonl`` and, on the next start, the recording is replayed through moto's
``/moto-api/recorder/replay-recording`` endpoint, which rebuilds the buckets and objects. Known limits of
the recorder: multipart uploads do not survive a replay (upload ids are random, so the recorded part
uploads point at an id the new server never issued), object timestamps are those of the replay, and the
recording only grows (object bodies are stored base64). :mod:`include.compliance.publish` therefore uses
single PUTs below a large threshold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from include.paths import xac_home

HOST = "127.0.0.1"
DEFAULT_PORT = 9000
RECORDING_NAME = "moto-recording.jsonl"
# Exit code of ``status`` when no server runs (LSB convention for "program is not running").
EXIT_NOT_RUNNING = 3


def run_dir() -> Path:
    """Where the detached server keeps its pidfile and log."""
    return xac_home() / "run"


def pidfile_path() -> Path:
    return run_dir() / "s3.pid"


def default_state_dir() -> Path:
    return xac_home() / "s3"


def free_port() -> int:
    """A port the kernel considers free right now (tiny race until moto binds it; fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port (then "it answers" would prove nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Exists but belongs to someone else: certainly not a server we started.
        return False
    # A zombie child still "exists" for kill(0); treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_moto_process(pid: int) -> bool:
    """Guard against pid reuse: only ever signal a process whose command line is a moto server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        # No /proc (macOS): fall back to trusting the pidfile.
        return _pid_alive(pid)
    return b"moto.server" in cmdline


def answers(endpoint_url: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers at ``endpoint_url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class S3Server:
    """Handle on a running moto server process."""

    port: int
    pid: int
    state_dir: Path | None = None
    host: str = HOST
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return _pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``); a no-op when already gone."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=timeout)
            return
        if not _pid_alive(self.pid) or not _is_moto_process(self.pid):
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_until_ready(endpoint_url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto server exited with code {process.returncode} before answering at {endpoint_url}"
            )
        if answers(endpoint_url, timeout=0.5):
            return
        time.sleep(0.05)
    process.terminate()
    raise TimeoutError(f"moto server did not answer at {endpoint_url} within {timeout:.0f}s")


def repair_recording(recording: Path) -> Path | None:
    """A server killed mid-write leaves a torn last line, which made every later replay fail (and
    every bucket unreachable). Keep every complete request, move the torn tail aside (returned) and
    cut it off the recording; None when the recording ends cleanly."""
    size = recording.stat().st_size
    with recording.open("rb") as handle:
        handle.seek(max(size - 1, 0))
        if handle.read(1) == b"\n":
            return None
        # Scan back for the last newline: the torn line starts after it (lines can hold large bodies).
        end, cut = size, 0
        while end > 0:
            start = max(end - (1 << 20), 0)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = start
        handle.seek(cut)
        torn = handle.read()
    aside = recording.with_name(f"{recording.name}.torn-{int(time.time())}")
    aside.write_bytes(torn)
    os.truncate(recording, cut)
    return aside


def _replay_recording(endpoint_url: str, recording: Path, timeout: float) -> None:
    """Rebuild state from a previous run's recording (moto replays it against itself)."""
    if not recording.exists() or recording.stat().st_size == 0:
        return
    request = urllib.request.Request(f"{endpoint_url}/moto-api/recorder/replay-recording", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise RuntimeError(f"replaying {recording} failed with HTTP {response.status}")


def start(
    port: int | None = None,
    state_dir: Path | None = None,
    *,
    detach: bool = False,
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
) -> S3Server:
    """Start moto on 127.0.0.1 and return once it answers HTTP requests.

    ``port=None`` picks a free port. ``state_dir`` enables persistence through moto's recorder (see the
    module docstring); ``None`` keeps everything in memory. ``detach=True`` puts the server in its own
    session so it outlives the calling process (used by the CLI).
    """
    chosen_port = port if port is not None else free_port()
    if port_in_use(chosen_port):
        raise OSError(f"port {chosen_port} on {HOST} is already in use")
    env = dict(os.environ)
    recording: Path | None = None
    if state_dir is not None:
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        recording = state_dir / RECORDING_NAME
        if recording.is_file() and recording.stat().st_size:
            # before the server starts: it appends to the recording, burying a torn line mid-file
            aside = repair_recording(recording)
            if aside is not None:
                print(
                    f"s3 server: the recording ended in a torn request (killed mid-write); "
                    f"set aside in {aside}",
                    file=sys.stderr,
                )
        env["MOTO_ENABLE_RECORDING"] = "True"
        env["MOTO_RECORDER_FILEPATH"] = str(recording)
    else:
        env.pop("MOTO_ENABLE_RECORDING", None)

    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_handle = open(log_path, "ab")
        stdout: int | object = log_handle
    else:
        log_handle = None
        stdout = subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(chosen_port)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=detach,
        )
    finally:
        if log_handle is not None:
            log_handle.close()
    server = S3Server(port=chosen_port, pid=process.pid, state_dir=state_dir, _process=process)
    try:
        _wait_until_ready(server.endpoint_url, process, ready_timeout)
        if recording is not None:
            _replay_recording(server.endpoint_url, recording, timeout=max(ready_timeout, 300.0))
    except BaseException:
        server.stop()
        raise
    if detach:
        # The CLI exits right after; dropping the Popen avoids reaping (and a ResourceWarning) later.
        server._process = None
    return server


S3_ENVIRONMENT = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextlib.contextmanager
def environment(**start_kwargs: object) -> Iterator[S3Server]:
    """A loopback server, with this process's S3 settings pointed at it while it runs.

    What the tests (and every process they start: Airflow components, the pods of the Kubernetes API
    double, explainer processes) inherit: ``S3_ENDPOINT_URL``, test credentials, a region when none is
    set. The previous values are restored afterwards.
    """
    saved = {name: os.environ.get(name) for name in S3_ENVIRONMENT}
    with start(**start_kwargs) as server:  # type: ignore[arg-type]
        os.environ.update(
            {
                "S3_ENDPOINT_URL": server.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": saved["AWS_DEFAULT_REGION"] or "us-east-1",
            }
        )
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def read_pidfile() -> S3Server | None:
    """The detached server described by the pidfile, or None when the pidfile is absent or stale."""
    path = pidfile_path()
    try:
        info = json.loads(path.read_text())
        server = S3Server(
            port=int(info["port"]),
            pid=int(info["pid"]),
            state_dir=Path(info["state_dir"]) if info.get("state_dir") else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(server.pid) or not _is_moto_process(server.pid):
        return None
    return server


def _write_pidfile(server: S3Server) -> None:
    path = pidfile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "pid": server.pid,
                "port": server.port,
                "endpoint_url": server.endpoint_url,
                "state_dir": str(server.state_dir) if server.state_dir else None,
            }
        )
    )
    tmp.replace(path)


def _cmd_start(args: argparse.Namespace) -> int:
    running = read_pidfile()
    if running is not None:
        if args.port is not None and args.port != running.port:
            print(
                f"note: already running on port {running.port}; --port {args.port} ignored",
                file=sys.stderr,
            )
        print(running.endpoint_url)
        return 0
    state_dir = None if args.ephemeral else Path(args.state_dir or default_state_dir())
    port = args.port if args.port is not None else DEFAULT_PORT
    server = start(port, state_dir, detach=True, log_path=run_dir() / "s3.log")
    _write_pidfile(server)
    print(server.endpoint_url)
    return 0


def _cmd_stop(_: argparse.Namespace) -> int:
    running = read_pidfile()
    if running is not None:
        running.stop()
        print(f"stopped moto server pid {running.pid}")
    else:
        print("not running")
    pidfile_path().unlink(missing_ok=True)
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    running = read_pidfile()
    if running is None or not answers(running.endpoint_url):
        print("not running")
        return EXIT_NOT_RUNNING
    print(f"running pid {running.pid} at {running.endpoint_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.embedded.s3_server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a detached server (idempotent)")
    p_start.add_argument("--port", type=int, default=None, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p_start.add_argument("--state-dir", default=None, help="recording directory (default $XAC_HOME/s3)")
    p_start.add_argument("--ephemeral", action="store_true", help="keep state in memory only")
    sub.add_parser("stop", help="stop the detached server (exit 0 when none runs)")
    sub.add_parser("status", help="exit 0 when running, 3 when not")
    args = parser.parse_args(argv)
    handlers = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
