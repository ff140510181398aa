"""Every explanation method on every sample model: time, peak memory, fidelity (one run each).

Issue target: peak RSS of the explainer process <= 2 GiB for the sample models. Each
(method, model) pair runs ``run_explain`` in a fresh process (so the peak RSS is that run's
alone: the runtime records ``ru_maxrss``) on 64 inference rows with 100 background rows, the
method's default parameters and seed 7; pairs the method cannot explain are refused before
any work (recorded with the refusal's message, as ``xac explain`` would print it).

    .venv/bin/python bench/bench_methods.py        # a few minutes on 2 cores

Writes bench/results/methods.json and prints a table; exits 1 when a run exceeds 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ROWS, BACKGROUND_ROWS, SEED = 64, 100, 7
RSS_LIMIT_MB = 2048.0
MODELS = (
    "diagnosis-risk-tabular",
    "diagnosis-risk-gbt",
    "diagnosis-risk-transformer",
    "multimodal-image-classifier-v3",
)


def run_one(method: str, model: str, inference: str, background: str, out: str) -> dict[str, Any]:
    """In the child process: one explanation run, its figures."""
    from include.explainers.errors import ExplainError
    from include.explainers.runtime import ExplainRequest, run_explain

    request = ExplainRequest(
        model,
        "1",
        method,
        inference_path=Path(inference),
        background_path=Path(background),
        params={},
        seed=SEED,
        out_dir=Path(out),
    )
    started = time.perf_counter()
    try:
        summary = run_explain(request)
    except ExplainError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
    runtime = summary["runtime"]
    return {
        "rows": summary["counts"]["instances"],
        "seconds_total": time.perf_counter() - started,
        "explain_seconds": runtime.get("explain_seconds"),
        "fidelity_seconds": runtime.get("fidelity_seconds"),
        "rows_per_second_explain": summary["counts"]["instances"]
        / max(runtime.get("explain_seconds", 0.0), 1e-9),
        "peak_rss_mb": summary["peak_rss_mb"],
        "fidelity_metric": summary["fidelity"]["metric"],
        "fidelity_mean": summary["fidelity"]["aggregate"],
        "fidelity_min": summary["fidelity"]["min"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=5, metavar=("METHOD", "MODEL", "INFERENCE", "BACKGROUND", "OUT"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "methods.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0

    from examples.datasets import tabular_frame
    from examples.models import multimodal_frame, train_sample_models
    from include.explainers.base import known_methods

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="xac-bench-methods-"))
    env = os.environ | {"XAC_HOME": os.environ.get("XAC_HOME", str(work / "home"))}
    os.environ["XAC_HOME"] = env["XAC_HOME"]
    train_sample_models()
    frames = {"tabular": tabular_frame(), "multimodal": multimodal_frame()}
    paths = {}
    for name, frame in frames.items():
        inference, background = work / f"{name}-inference.parquet", work / f"{name}-background.parquet"
        frame.iloc[:ROWS].reset_index(drop=True).to_parquet(inference)
        frame.iloc[200 : 200 + BACKGROUND_ROWS].reset_index(drop=True).to_parquet(background)
        paths[name] = (str(inference), str(background))

    results = []
    for method in known_methods():
        for model in MODELS:
            inference, background = paths["multimodal" if model.startswith("multimodal") else "tabular"]
            out = work / "out" / f"{method}-{model}"
            done = subprocess.run(
                [sys.executable, __file__, "--one", method, model, inference, background, str(out)],
                capture_output=True,
                text=True,
                env=env,
                timeout=1800,
            )
            if done.returncode != 0:
                figures: dict[str, Any] = {"error": done.stderr.strip().splitlines()[-1:]}
            else:
                figures = json.loads(done.stdout.strip().splitlines()[-1])
            results.append({"method": method, "model": model, **figures})
            shown = (
                figures.get("refused")
                or figures.get("error")
                or (
                    f"{figures['rows_per_second_explain']:8.1f} rows/s  "
                    f"explain {figures['explain_seconds']:6.2f} s  "
                    f"fidelity {figures['fidelity_seconds']:6.2f} s  RSS {figures['peak_rss_mb']:6.0f} MB  "
                    f"gate mean {figures['fidelity_mean']}"
                )
            )
            print(f"{method:18s} {model:32s} {str(shown)[:150]}", flush=True)

    ran = [r for r in results if "peak_rss_mb" in r]
    report = {
        "benchmark": "methods_on_sample_models",
        "settings": {
            "rows": ROWS,
            "background_rows": BACKGROUND_ROWS,
            "seed": SEED,
            "parameters": "defaults",
        },
        "results": results,
        "targets": {
            "peak_rss_at_most_2_gib": all(r["peak_rss_mb"] <= RSS_LIMIT_MB for r in ran),
            "every_pair_ran_or_was_refused": all("error" not in r for r in results),
        },
        "max_peak_rss_mb": max((r["peak_rss_mb"] for r in ran), default=None),
        "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["targets"]), f"max peak RSS {report['max_peak_rss_mb']} MB")
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
