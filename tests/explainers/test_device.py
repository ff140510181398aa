"""Where explanations are computed: XAC_EXPLAIN_DEVICE, bf16 autocast and torch.compile of IG.

No GPU here: the CUDA paths run only on a device machine (bench/bench_gpu.py). These tests pin
what a CPU can check: the choice of device, the refusal of ``cuda`` without a GPU before any
output, the record in the run summary, and that bf16 and compiled IG agree with fp32 eager.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from include.explainers import device as device_module
from include.explainers.base import ExplainedModel, Modality, get_explainer
from include.explainers.device import device_for, requested_device, resolve_device
from include.explainers.errors import ParameterError
from include.explainers.integrated_gradients import EXPLAINER as IG
from include.explainers.params import normalise_params
from include.explainers.runtime import run_explain

from .test_runtime import TAB, _request

NO_CUDA = not torch.cuda.is_available()


def test_requested_device_defaults_to_auto_and_names_the_variable_when_wrong() -> None:
    assert requested_device({}) == "auto"
    assert requested_device({"XAC_EXPLAIN_DEVICE": " CUDA "}) == "cuda"
    with pytest.raises(
        ParameterError, match="XAC_EXPLAIN_DEVICE='tpu' is not a device; choose one of auto, cpu, cuda"
    ):
        requested_device({"XAC_EXPLAIN_DEVICE": "tpu"})


@pytest.mark.skipif(not NO_CUDA, reason="checks the machine without a GPU")
def test_auto_runs_on_the_cpu_and_cuda_without_a_gpu_is_refused() -> None:
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ParameterError, match="XAC_EXPLAIN_DEVICE=cuda but torch sees no CUDA device"):
        resolve_device("cuda")


def test_methods_without_a_device_engine_stay_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "resolve_device", lambda requested: torch.device("cuda", 0))
    assert device_for(get_explainer("IntegratedGradients"), "auto") == torch.device("cuda", 0)
    assert device_for(get_explainer("KernelSHAP"), "auto") == torch.device("cuda", 0)
    for method in ("LIME", "TreeSHAP", "Occlusion", "AttentionRollout"):
        assert device_for(get_explainer(method), "auto").type == "cpu", method


@pytest.mark.skipif(not NO_CUDA, reason="checks the machine without a GPU")
def test_cuda_requested_without_a_gpu_fails_before_any_output(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XAC_EXPLAIN_DEVICE", "cuda")
    request = _request(tmp_path, TAB, "KernelSHAP", tabular_frame.iloc[:4], tabular_frame.iloc[100:140])
    with pytest.raises(ParameterError, match="no CUDA device"):
        run_explain(request)
    assert not (tmp_path / "out").exists()


def test_the_run_summary_records_the_device(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XAC_EXPLAIN_DEVICE", "cpu")
    request = _request(
        tmp_path, TAB, "IntegratedGradients", tabular_frame.iloc[:4], tabular_frame.iloc[100:140]
    )
    summary = run_explain(request)
    assert summary["device"] == {"requested": "cpu", "type": "cpu", "threads": torch.get_num_threads()}
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["device"]["type"] == "cpu"
    assert summary["parameters"]["precision"] == "fp32" and summary["parameters"]["compile"] is False


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _cnn_case() -> tuple[ExplainedModel, torch.Tensor]:
    torch.manual_seed(3)
    modality = Modality("image", "image", tuple(f"px{i}" for i in range(64)), (1, 8, 8))
    model = ExplainedModel(_SmallCNN(), [modality], "multiclass", ["a", "b", "c"])
    return model, torch.rand(6, 1, 8, 8) * 4


def _ig(model: ExplainedModel, x: torch.Tensor, **extra: object) -> tuple[np.ndarray, np.ndarray]:
    params = normalise_params(
        "IntegratedGradients", {"steps": 32, "baseline": "zeros", **extra}, has_image=True
    )
    out = IG.explain(model, (x,), (x[:1],), params, seed=0)
    assert out.resolved_params["precision"] == params["precision"]
    error = np.abs(out.features.sum(1) - (out.outputs - out.baselines)) / np.abs(out.outputs - out.baselines)
    return out.features, error


def test_bf16_autocast_integrated_gradients_stays_close_to_fp32() -> None:
    model, x = _cnn_case()
    fp32, fp32_error = _ig(model, x)
    bf16, bf16_error = _ig(model, x, precision="bf16")
    assert fp32_error.max() < 1e-3
    # bf16 keeps ~3 significant digits of the activations, not of f(x) - f(x'): an instance whose
    # difference is tiny (4e-4 here, against ~0.05 for the others) is judged on the typical
    # difference's scale (on CPUs with native bf16 kernels its relative error reached 27 %).
    delta = np.abs(fp32.sum(1))
    scaled = bf16_error * delta / np.maximum(delta, np.median(delta))
    assert scaled.max() < 0.05, (bf16_error, delta)
    relative = np.abs(bf16 - fp32).sum(1) / np.abs(fp32).sum(1)
    assert relative.max() < 0.05, relative
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bf16


def test_bad_precision_is_refused() -> None:
    with pytest.raises(ParameterError, match="precision must be one of fp32, bf16"):
        normalise_params("IntegratedGradients", {"precision": "fp8"}, has_image=True)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_integrated_gradients_matches_eager_and_shares_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._dynamo

    monkeypatch.setenv("XAC_COMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model, x = _cnn_case()
    eager, _ = _ig(model, x)
    compiled, error = _ig(model, x, compile=True)
    assert error.max() < 1e-3
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)
    entries = list((tmp_path / "cache").glob("xac-compile-*.bin"))
    assert len(entries) == 1 and entries[0].stat().st_size > 0
    # Another process (simulated: a fresh model object, dynamo reset, torch's own cache gone)
    # finds the entry by the model's weights and loads it.
    torch._dynamo.reset()
    shutil.rmtree(tmp_path / "inductor", ignore_errors=True)
    loaded: list[bytes] = []
    original = torch.compiler.load_cache_artifacts
    monkeypatch.setattr(
        torch.compiler, "load_cache_artifacts", lambda data: (loaded.append(data), original(data))[1]
    )
    again, _ = _ig(_cnn_case()[0], x, compile=True)
    assert loaded == [entries[0].read_bytes()]
    np.testing.assert_allclose(again, compiled, rtol=1e-5, atol=1e-7)
