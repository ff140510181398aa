"""Run the explainer as a local process (the embedded default's backend) and measure it.

The same ``xac explain`` command that a Kubernetes pod runs is started here as a child process.
Its output is streamed line by line to the caller (the Airflow task log), and what it used is
measured for the cost stage: exact start and finish times, CPU seconds (user + system, from the
kernel's accounting of the waited-for child, so nothing between samples is missed) and peak
resident memory of the whole process tree.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

from include.finops.meter import ResourceUsage

_SAMPLE_SECONDS = 0.1


class ProcessFailed(RuntimeError):
    """The explainer process exited with a non-zero code."""

    def __init__(self, exit_code: int, usage: ResourceUsage, tail: list[str]):
        self.exit_code = exit_code
        self.usage = usage
        self.tail = tail
        super().__init__(f"explainer process exited with code {exit_code}:\n" + "\n".join(tail))


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], None] = print,
    timeout_seconds: float | None = None,
) -> ResourceUsage:
    """Run ``command``, stream its output to ``on_line``, and return what it used.

    Raises ProcessFailed (with the usage, which is still billed) on a non-zero exit.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = datetime.now(UTC)
    proc = subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            handle = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            peak = max(peak, _tree_rss(handle))
            stop.wait(_SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tail: list[str] = []
    assert proc.stdout is not None
    timer = threading.Timer(timeout_seconds, proc.kill) if timeout_seconds else None
    if timer:
        timer.start()
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            on_line(line)
            tail = [*tail[-39:], line]
        exit_code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        stop.set()
        sampler.join()
    finished = datetime.now(UTC)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss is the largest single child's peak (KiB on Linux); the sampler sees the whole tree.
    peak = max(peak, int(after.ru_maxrss) * 1024 if after.ru_maxrss > before.ru_maxrss else 0)
    usage = ResourceUsage(
        started_at=started,
        finished_at=finished,
        cpu_seconds=max(cpu_seconds, 0.0),
        peak_memory_bytes=peak,
        exit_code=exit_code,
    )
    if exit_code != 0:
        raise ProcessFailed(exit_code, usage, tail)
    return usage


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment plus ``extra``; quiet, single-threaded-BLAS-safe defaults."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    if extra:
        env.update(extra)
    return env
