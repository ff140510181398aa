"""bench/bench_gpu.py runs end to end in its --smoke mode on the CPU.

The GPU figures need a device machine (15 minutes per session, when one is lent); a script
that breaks there costs that time, so its every stage runs here on tiny sizes first. The
figures of a smoke run mean nothing and are not judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from include.paths import REPO_ROOT


def test_gpu_benchmark_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "bench_gpu.py"),
            "--smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"]["type"] == "cpu"
    shap = report["kernel_shap"]
    assert shap["ours_rows_per_second"] > 0 and shap["shap_rows_per_second"] > 0
    # 8 features: the exact reference enumerates 254 coalitions; numSamples 500 covers them too.
    assert shap["error_vs_exact"]["ours"] < 1e-9
    assert shap["error_vs_exact"]["shap_l1_reg_false"] < 1e-3
    ig = report["integrated_gradients"]
    variants = (
        "ours_fp32",
        "ours_bf16",
        "ours_bf16_compiled",
        "ours_bf16_compiled_nchw",
        "ours_bf16_adaptive",
    )
    for variant in ("captum_fp32", *variants):
        assert ig[variant]["rows_per_second"] > 0, variant
        assert ig[variant]["completeness_error"]["max"] < 0.05, variant
    assert ig["ours_bf16_adaptive"]["gradient_evaluations_mean"] <= ig["steps"]
    # Each variant says where its time went: rows through the gradient passes (compiled ones
    # only where compile is on) and the seconds of each stage.
    for variant in ("ours_fp32", "ours_bf16_compiled"):
        work = ig[variant]["work"]
        assert work["gradient_rows"] >= ig["images"] * ig["steps"], variant
        assert work["seconds_gradient_passes"] > 0, variant
    assert ig["ours_fp32"]["work"]["compiled_gradient_rows"] == 0
    assert ig["captum_fp32_no_tf32"]["rows_per_second"] > 0
    assert ig["ours_fp32"]["speedup_vs_captum_fp32_no_tf32"] > 0
    assert ig["profile"]["variant"].startswith("ours_") and ig["profile"]["seconds"] > 0
    assert any("aten::" in line for line in ig["profile"]["by_cpu_time"])
    # Each compiled variant compiled its own graphs in its first call (the "_nchw" one too, with
    # other options: not the default graph from torch's caches) and none while timed.
    for variant in ("ours_bf16_compiled", "ours_bf16_compiled_nchw"):
        assert ig[variant]["graphs_compiled"]["first_call"] >= 1, variant
    timed = [
        v["graphs_compiled"]["timed_calls"]
        for v in ig.values()
        if isinstance(v, dict) and "graphs_compiled" in v
    ]
    assert timed and not any(timed), timed
    assert ig["ours_fp32"]["graphs_compiled"]["first_call"] == 0
    compiled = ig["ours_bf16_compiled"]["work"]
    assert compiled["compiled_gradient_rows"] == compiled["gradient_rows"]
    # Same rule and steps: our fp32 engine and Captum's agree on completeness.
    assert (
        abs(ig["ours_fp32"]["completeness_error"]["max"] - ig["captum_fp32"]["completeness_error"]["max"])
        < 1e-4
    )
    assert set(report["targets"]) == {
        "kernel_shap_at_least_3000_rows_per_second",
        "kernel_shap_never_slower_than_shap",
        "kernel_shap_error_no_worse_than_shap",
        "integrated_gradients_at_least_4x_captum_fp32_at_error_le_1pct",
    }
