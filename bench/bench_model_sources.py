"""Users' own models (issue 16 targets), in one run on this machine:

1. KernelSHAP (numSamples 500, 100 background rows, 8 rows) on the same scikit-learn model, in
   process (skops) and through a real MLServer V2 endpoint on 127.0.0.1, over REST (JSON) and gRPC
   (raw tensors), with inference in the server's process or on 2 parallel workers: the endpoint
   must reach >= 50 % of the in-process rows/s. The target case is a 100-tree random forest over
   gRPC with 2 server workers (the in-process run evaluates on 2 pass workers too); a logistic
   regression, whose predict costs next to nothing, shows the transport's floor.
2. Loading each supported model source (torchscript, torch-export, onnx, xgboost, lightgbm, skops,
   mlflow, oip) must add <= 2 s to a shard's start-up beyond importing the library: each load is timed in a
   fresh process after its library is imported.

    .venv/bin/python bench/bench_model_sources.py        (needs .venv/mlserver: make test makes it)
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
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLUMNS = [f"x{k}" for k in range(8)]
ENDPOINT_TARGET = 0.5
LOAD_TARGET_SECONDS = 2.0

LOAD_SNIPPET = """
import sys, time, importlib
t0 = time.perf_counter()
for library in sys.argv[3].split(","):  # the source's library (for MLflow, also its flavor's)
    importlib.import_module(library)
import torch  # the runtime's own import, paid by every shard
from include.explainers.sources import ModelRef, model_from_source, LoadOptions
t1 = time.perf_counter()
model_from_source(ModelRef.parse(sys.argv[1]), sys.argv[2].split(","),
                  options=LoadOptions(skops_trusted=("sklearn.tree._tree.Tree",)))
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def _kernel_shap_rows_per_second(model: str, rows: Path, background: Path, out: Path) -> float:
    from include.explainers.direct import DirectRequest, run_direct

    request = DirectRequest(
        model=model,
        data=str(rows),
        background=str(background),
        method="KernelSHAP",
        out_dir=out,
        num_samples=500,
        params={"backgroundDataSubsetSize": 100},
        skops_trusted=("sklearn.tree._tree.Tree",),
    )
    summary = run_direct(request)
    return 8 / summary["runtime"]["explain_seconds"]


SERVER_WORKERS = (0, 2)  # MLServer parallel_workers: inference in the server's process, or one per core
TARGET_CASE = ("random_forest_100", "grpc", 2)


def endpoint_ratio(folder: Path) -> dict[str, dict[str, float]]:
    """rows/s in process and through MLServer, per model x server workers x transport (REST, gRPC)."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from tests.explainers.mlserver import grpc_url, served_sklearn_model

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(2000, len(COLUMNS))), columns=COLUMNS)
    y = (x["x0"] + x["x1"] * x["x2"] - 0.5 * x["x3"] > 0).astype(int)
    rows, background = folder / "rows.parquet", folder / "background.parquet"
    x.iloc[:8].to_parquet(rows, index=False)
    x.iloc[100:200].to_parquet(background, index=False)
    figures: dict[str, dict[str, float]] = {}
    for name, estimator in {
        "logistic_regression": LogisticRegression(),
        "random_forest_100": RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0),
    }.items():
        estimator.fit(x.to_numpy(), y)
        sio.dump(estimator, folder / f"{name}.skops")
        for workers in SERVER_WORKERS:
            server = folder / f"server-{name}-{workers}"
            local: list[float] = []
            remote: dict[str, list[float]] = {"rest": [], "grpc": []}
            with served_sklearn_model(estimator, server, name, len(COLUMNS), workers=workers) as url:
                urls = {"rest": f"oip:{url}", "grpc": f"oip:{grpc_url(url, server)}"}
                for transport, model in urls.items():  # warm: a serving endpoint has its workers up
                    _kernel_shap_rows_per_second(
                        model, rows, background, folder / f"w{name}{workers}{transport}"
                    )
                for rep in range(3):  # interleaved, so drift on the machine hits all three alike
                    local.append(
                        _kernel_shap_rows_per_second(
                            f"skops:{folder / f'{name}.skops'}",
                            rows,
                            background,
                            folder / f"l{name}{workers}{rep}",
                        )
                    )
                    for transport, model in urls.items():
                        out = folder / f"r{name}{workers}{transport}{rep}"
                        remote[transport].append(_kernel_shap_rows_per_second(model, rows, background, out))
            in_process = statistics.median(local)
            for transport, speeds in remote.items():
                figures[f"{name}/{transport}/{workers}_workers"] = {
                    "in_process_rows_per_second": round(in_process, 2),
                    "endpoint_rows_per_second": round(statistics.median(speeds), 2),
                    "ratio": round(statistics.median(speeds) / in_process, 3),
                }
    return figures


def load_times(folder: Path) -> dict[str, dict[str, float]]:
    import lightgbm as lgb
    import skops.io as sio
    import torch
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier

    from tests.explainers.mlserver import served_sklearn_model

    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(2000, len(COLUMNS))), columns=COLUMNS)
    y = (x["x0"] - x["x1"] > 0).astype(int)
    net = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).eval()
    example = torch.zeros(2, 8)
    torch.jit.save(torch.jit.trace(net, example), folder / "m.torchscript")
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "m.pt2")
    torch.onnx.export(
        net,
        (example,),
        str(folder / "m.onnx"),
        dynamic_axes={"input": {0: "b"}},
        input_names=["input"],
        dynamo=False,
    )
    xgb.train({"objective": "binary:logistic", "max_depth": 6}, xgb.DMatrix(x, y), 500).save_model(
        folder / "m.json"
    )
    lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 500).save_model(folder / "m.txt")
    gbc = GradientBoostingClassifier(n_estimators=300, max_depth=3).fit(x, y)
    sio.dump(gbc, folder / "m.skops")
    cases = {
        "torchscript": (f"torchscript:{folder / 'm.torchscript'}", "torch"),
        "torch-export": (f"torch-export:{folder / 'm.pt2'}", "torch"),
        "onnx": (f"onnx:{folder / 'm.onnx'}", "onnxruntime"),
        "xgboost (500 trees)": (f"xgboost:{folder / 'm.json'}", "xgboost"),
        "lightgbm (500 trees)": (f"lightgbm:{folder / 'm.txt'}", "lightgbm"),
        "skops (300 trees)": (f"skops:{folder / 'm.skops'}", "skops.io"),
    }
    import os

    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    registry = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = registry  # the load subprocesses inherit it
    mlflow.set_tracking_uri(registry)
    MlflowClient().create_experiment("bench", artifact_location=(folder / "mlartifacts").as_uri())
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            gbc,
            name="model",
            registered_model_name="bench-gbc",
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    cases["mlflow (skops, 300 trees)"] = ("mlflow:models:/bench-gbc/1", "mlflow,skops.io")
    figures = {}
    with served_sklearn_model(gbc, folder / "server", "gbc", len(COLUMNS), declare=False) as url:
        cases["oip"] = (f"oip:{url}", "urllib3")
        for name, (ref, library) in cases.items():
            loads, imports = [], []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", LOAD_SNIPPET, ref, ",".join(COLUMNS), library],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=REPO_ROOT,
                )
                imported, loaded = (float(v) for v in out.stdout.split())
                imports.append(imported)
                loads.append(loaded)
            figures[name] = {
                "import_seconds": round(statistics.median(imports), 3),
                "load_seconds": round(statistics.median(loads), 3),
                "max_load_seconds": round(max(loads), 3),
            }
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="xac-bench-sources-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        endpoint = endpoint_ratio(folder)
        loads = load_times(folder)
    result = {
        "benchmark": "model_sources",
        "machine": "2 cores, CPU only",
        "endpoint_kernel_shap": {
            "setting": "KernelSHAP numSamples 500, 100 background rows, 8 rows, median of 3; MLServer 1.7.1 "
            "(scikit-learn runtime) on 127.0.0.1, REST (JSON) and gRPC (raw tensors), with 0 or 2 parallel "
            "inference workers, vs the same model loaded from skops in process (2 pass workers). Keys: "
            "model/transport/server workers",
            "target_ratio": ENDPOINT_TARGET,
            "target_case": "/".join(map(str, TARGET_CASE[:2])) + f"/{TARGET_CASE[2]}_workers",
            "models": endpoint,
        },
        "load": {
            "setting": "fresh process; library import (and torch) first, then model_from_source; median of 3",
            "target_seconds": LOAD_TARGET_SECONDS,
            "sources": loads,
        },
        "meets_target": endpoint["/".join(map(str, TARGET_CASE[:2])) + f"/{TARGET_CASE[2]}_workers"]["ratio"]
        >= ENDPOINT_TARGET
        and all(s["max_load_seconds"] <= LOAD_TARGET_SECONDS for s in loads.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (REPO_ROOT / "bench" / "results" / "model_sources.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
