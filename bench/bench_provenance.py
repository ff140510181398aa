"""The provenance stage alone for each sample config, in a fresh process, imports included.

Issue 3 target: ≤ 15 s per sample model on this 2-core machine. Uses `xac provenance check`
(the CI entry point), after the set-up `xac samples prepare` (not timed).

    .venv/bin/python bench/bench_provenance.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO_ROOT / "include" / "configs" / "explainers").glob("*.yaml"))
TARGET_SECONDS = 15.0


def main() -> int:
    xac = [sys.executable, "-m", "include.cli"]
    subprocess.run([*xac, "samples", "prepare"], check=True, stdout=subprocess.DEVNULL)
    figures: dict[str, dict[str, float]] = {}
    for config in CONFIGS:
        times = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                subprocess.run(
                    [*xac, "provenance", "check", "--config", str(config), "--out", out],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                times.append(time.perf_counter() - started)
        figures[config.stem] = {
            "median_seconds": round(statistics.median(times), 2),
            "max_seconds": round(max(times), 2),
        }
    result = {
        "benchmark": "provenance_stage_fresh_process",
        "target_seconds": TARGET_SECONDS,
        "configs": figures,
        "meets_target": all(f["max_seconds"] <= TARGET_SECONDS for f in figures.values()),
    }
    (REPO_ROOT / "bench" / "results" / "provenance.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
