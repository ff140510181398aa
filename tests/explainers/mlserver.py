"""Start a real MLServer (scikit-learn runtime) on 127.0.0.1 for one model (tests and bench only).

MLServer lives in its own venv (``.venv/mlserver``, made by ``make test`` from
requirements-mlserver.txt; ``XAC_MLSERVER`` may name another ``mlserver`` executable): it cannot
share the project's (starlette pins). The model is written with joblib *on the server's side*, as a
team serving scikit-learn with MLServer does; the explainer only ever talks V2 REST to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def mlserver_executable() -> Path | None:
    path = Path(os.environ.get("XAC_MLSERVER", REPO_ROOT / ".venv" / "mlserver" / "bin" / "mlserver"))
    return path if path.is_file() else None


def grpc_url(url: str, folder: Path) -> str:
    """The gRPC form of a model served from ``folder`` by :func:`served_sklearn_model` (its V2 URL)."""
    from urllib.parse import urlsplit

    port = json.loads((folder / "settings.json").read_text())["grpc_port"]
    return f"grpc://127.0.0.1:{port}{urlsplit(url).path}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def served_sklearn_model(
    estimator: Any, folder: Path, name: str, n_features: int, *, declare: bool = True, workers: int = 0
) -> Iterator[str]:
    """Serve ``estimator`` as model ``name``; yields its V2 URL. ``declare``: declare the inputs and
    the predict_proba output in model-settings.json (MLServer reports none otherwise). ``workers``:
    MLServer's parallel inference workers (0: inference in the server's own process)."""
    import joblib

    executable = mlserver_executable()
    if executable is None:
        raise FileNotFoundError("MLServer is not installed: make test creates .venv/mlserver")
    model_dir = folder / name
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, model_dir / "model.joblib")
    settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    if declare:
        settings["inputs"] = [{"name": "features", "datatype": "FP64", "shape": [-1, n_features]}]
        settings["outputs"] = [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}]
    (model_dir / "model-settings.json").write_text(json.dumps(settings))
    port = _free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": _free_port(),
                "metrics_port": _free_port(),
                "host": "127.0.0.1",
                "parallel_workers": workers,
                "metrics_endpoint": None,
            }
        )
    )
    log = (folder / "mlserver.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/v2/models/{name}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MLServer did not start: {(folder / 'mlserver.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
