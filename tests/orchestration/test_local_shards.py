"""Local shards: which explainer failures are retried, and failed tries billed beside the retry.

The explainer process here is a real child process that exits with a given code or is killed by a
real signal (as the OOM killer would): ``local_explain_command`` is replaced by such a command, the
rest of ``explain_shard_step`` (measuring, logging, classifying) runs as in a DAG task.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.finops.meter import ResourceRequest, ResourceUsage, RunLabels, price_usage
from include.finops.pricing import load_catalogue
from include.finops.store import CostStore
from include.orchestration import shards
from include.orchestration.pipeline import StageFailed
from include.orchestration.shards import ShardProcessFailed, explain_shard_step


def test_refused_input_fails_without_retry_and_crashes_are_retried(
    monkeypatch: pytest.MonkeyPatch, s3: Any, make_run: Any
) -> None:
    """Failed tries and the shard's log are staged in object storage: the join may run elsewhere."""
    run = make_run("local-shards")
    staging = run.staging(s3)

    def _run(monkeypatch: pytest.MonkeyPatch, s3: Any, script: str) -> dict[str, Any]:
        monkeypatch.setattr(shards, "local_explain_command", lambda *a: [sys.executable, "-c", script])
        shard = {"index": 0, "count": 1, "out": staging.uri("shards/0-of-1/")}
        return explain_shard_step(run, None, None, shard, s3, log=lambda line: None)  # type: ignore[arg-type]

    # 1: the input was refused; a retry would get the same answer.
    with pytest.raises(StageFailed, match="exited with code 1"):
        _run(monkeypatch, s3, "import sys; print('bad config'); sys.exit(1)")
    # 3: could not run (storage out of reach); a signal: killed (the OOM killer's SIGKILL).
    with pytest.raises(ShardProcessFailed, match="exited with code 3"):
        _run(monkeypatch, s3, "import sys; sys.exit(3)")
    with pytest.raises(ShardProcessFailed, match=f"exited with code -{int(signal.SIGKILL)}"):
        _run(monkeypatch, s3, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert not issubclass(ShardProcessFailed, StageFailed)  # the DAG maps only StageFailed to no-retry
    assert staging.list("usage/") == [f"shard-0-failed-{i}.json" for i in (1, 2, 3)]

    result = _run(monkeypatch, s3, "print('explained')")
    assert result["usage"]["exit_code"] == 0
    assert [t["exit_code"] for t in result["failed_tries"]] == [1, 3, -int(signal.SIGKILL)]
    assert staging.get_bytes("logs/shards/explain-0-of-1.log") == b"explained\n"


def test_failed_tries_are_priced_as_their_own_rows(tmp_path: Path) -> None:
    labels = RunLabels("m", "1", "m-cfg", "r1", "team", None, shard=0)
    request = ResourceRequest(cpu_cores=1.0, memory_bytes=1 << 30)
    catalogue = load_catalogue()
    t0 = datetime(2026, 11, 27, 8, tzinfo=UTC)

    def usage(minutes: int, exit_code: int) -> ResourceUsage:
        end = t0.replace(minute=minutes)
        return ResourceUsage(t0, end, cpu_seconds=30.0, peak_memory_bytes=1 << 29, exit_code=exit_code)

    ok = price_usage(usage(10, 0), request, labels, catalogue)
    failed = price_usage(usage(5, -9), request, RunLabels(**{**labels.__dict__, "failed_try": 1}), catalogue)
    assert {r["ResourceId"] for r in ok} == {"local/m-cfg/r1/shard-0"}
    assert {r["ResourceId"] for r in failed} == {"local/m-cfg/r1/shard-0/failed-1"}
    assert {r["ResourceName"] for r in failed} == {"m-cfg shard 0 (failed try 1)"}
    store = CostStore(tmp_path / "costs.db")
    assert store.append(ok + failed) == len(ok) + len(failed)
    total = sum(r["BilledCost"] for r in ok + failed)
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(total) and sum(r["BilledCost"] for r in failed) > 0
    assert json.dumps(failed)  # FOCUS rows stay JSON
