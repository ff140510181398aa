"""What staging every hand-over between tasks through object storage costs (issue 17 target: ≤ 10 %).

The same sample DAG runs from trigger to verified bundle (``scripts/demo.py``: ``dag.test()`` on the
embedded default, moto S3 on loopback) with this tree's design (every artifact a later task needs
goes through the run's staging prefix) and with the previous design (tasks handed files to each other
through ``$XAC_HOME/runs/<dag>/<run>/`` on the local disk), checked out from ``--baseline`` into a
temporary git worktree. Each design gets its own fresh ``XAC_HOME`` with the samples prepared once
(not timed); the runs then alternate between the designs, so a slower period of the machine hits
both. Figures go to bench/results/staging.json.

    .venv/bin/python bench/bench_staging.py [--baseline REV] [--repeats N] [--dag DAG_ID]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = REPO_ROOT / "bench" / "results" / "staging.json"
# The last commit whose tasks handed files over through the local run workspace.
BASELINE = "a634ca4"
TARGET = 0.10


def _environment(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "XAC_", "S3_"))}
    env.update(
        XAC_HOME=str(home),
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(tree / "dags"),
        PYTHONPATH=str(tree),  # the tree's own `include`, ahead of the editable install
        GX_ANALYTICS_ENABLED="false",
    )
    return env


def _prepare(tree: Path, home: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "include.cli", "samples", "prepare"],
        check=True,
        cwd=tree,
        env=_environment(tree, home),
        stdout=subprocess.DEVNULL,
    )


def _one_run(tree: Path, home: Path, dag_id: str) -> float:
    out = home / "demo.json"
    subprocess.run(
        [sys.executable, str(tree / "scripts" / "demo.py"), "--dag", dag_id, "--json-out", str(out)],
        check=True,
        cwd=tree,
        env=_environment(tree, home),
        stdout=subprocess.DEVNULL,
    )
    (run,) = json.loads(out.read_text())
    if run["status"] != "verified":
        raise SystemExit(f"{tree}: {dag_id} did not end with a verified bundle: {run['status']}")
    return float(run["seconds_trigger_to_verified"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="the commit of the previous design")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dag", default="diagnosis-risk-kernelshap")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="xac-bench-staging-"))
    baseline_tree = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    designs = {"object_storage": REPO_ROOT, "local_workspace": baseline_tree}
    try:
        homes = {name: scratch / f"home-{name}" for name in designs}
        for name, tree in designs.items():
            _prepare(tree, homes[name])
            _one_run(tree, homes[name], args.dag)  # warm-up: first imports, DB migration, caches
        seconds: dict[str, list[float]] = {name: [] for name in designs}
        for _ in range(args.repeats):
            for name, tree in designs.items():
                seconds[name].append(round(_one_run(tree, homes[name], args.dag), 2))
                print(f"{name}: {seconds[name][-1]:.1f}s", flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=False
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    overhead = medians["object_storage"] / medians["local_workspace"] - 1
    result = {
        "benchmark": "staging_overhead_trigger_to_verified_bundle",
        "target": f"object storage adds <= {TARGET:.0%} to trigger-to-verified-bundle time",
        "dag": args.dag,
        "baseline_commit": args.baseline,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "median_seconds": medians,
        "overhead": round(overhead, 4),
        "meets_target": overhead <= TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "overhead", "meets_target")}, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
