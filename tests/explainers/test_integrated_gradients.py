"""Integrated Gradients against ground truth (linear closed form) and completeness."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from include.explainers.base import ExplainedModel, Modality
from include.explainers.fidelity import integrated_gradients_fidelity
from include.explainers.integrated_gradients import EXPLAINER
from include.explainers.params import normalise_params


class _LinearTwoInputs(nn.Module):
    """f(image, tabular) = <W, image> + <v, tabular> + b: IG with a zero baseline is W*x exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.image_weight = nn.Parameter(torch.randn(1, 4, 4, dtype=torch.float64))
        self.tabular = nn.Linear(3, 1).double()

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return (image * self.image_weight).sum(dim=(1, 2, 3)) + self.tabular(tabular).squeeze(1)


def _modalities() -> list[Modality]:
    return [
        Modality("image", "image", tuple(f"px{i}" for i in range(16)), (1, 4, 4)),
        Modality("tabular", "tabular", ("a", "b", "c"), (3,)),
    ]


def test_linear_model_with_zero_baseline_equals_w_times_x() -> None:
    torch.manual_seed(0)
    net = _LinearTwoInputs()
    model = ExplainedModel(net, _modalities(), "regression", [])
    image, tabular = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 16, torch.randn(5, 3, dtype=torch.float64)
    background = (torch.rand(9, 1, 4, 4, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64))
    params = normalise_params("IntegratedGradients", {"baseline": "zeros"}, has_image=True)
    out = EXPLAINER.explain(model, (image, tabular), background, params, seed=0)
    truth = np.concatenate(
        [
            (image * net.image_weight).reshape(5, -1).detach().numpy(),
            (tabular * net.tabular.weight[0]).detach().numpy(),
        ],
        axis=1,
    )
    assert np.abs(out.features - truth).max() < 1e-6
    with torch.no_grad():
        np.testing.assert_allclose(out.baselines, net.tabular.bias.item(), atol=1e-12)  # f(0)


def test_background_mean_baseline_is_the_default_for_tabular_inputs() -> None:
    torch.manual_seed(1)
    net = nn.Linear(4, 1).double()
    modalities = [Modality("tabular", "tabular", ("a", "b", "c", "d"), (4,))]
    model = ExplainedModel(net, modalities, "regression", [])
    x, bg = torch.randn(3, 4, dtype=torch.float64), torch.randn(40, 4, dtype=torch.float64)
    out = EXPLAINER.explain(model, (x,), (bg,), normalise_params("IntegratedGradients", {}), seed=0)
    assert out.resolved_params["baseline"] == {"tabular": "background_mean"}
    truth = (x - bg.mean(0)).numpy() * net.weight.detach().numpy()[0]
    assert np.abs(out.features - truth).max() < 1e-9


def test_completeness_on_the_trained_multimodal_model(sample_models: dict, multimodal_frame) -> None:
    """50 Gauss-Legendre steps: completeness error <= 1 % on every instance."""
    from examples.datasets import PIXEL_FEATURES, SCAN_FEATURES
    from include.explainers.model_store import load_model

    model = load_model("multimodal-image-classifier-v3", "1").explained()
    images = torch.from_numpy(multimodal_frame[PIXEL_FEATURES].to_numpy(np.float32)).reshape(-1, 1, 8, 8)
    scan = torch.from_numpy(multimodal_frame[SCAN_FEATURES].to_numpy(np.float32))
    inputs, background = (images[:24], scan[:24]), (images[400:500], scan[400:500])
    params = normalise_params("IntegratedGradients", {"steps": 50}, has_image=True)
    out = EXPLAINER.explain(model, inputs, background, params, seed=0)
    delta = out.outputs - out.baselines
    relative_error = np.abs(out.features.sum(axis=1) - delta) / np.abs(delta)
    assert relative_error.max() <= 0.01, relative_error.max()
    fidelity = integrated_gradients_fidelity(out)
    assert fidelity["min"] >= 0.99 and fidelity["aggregate"] >= 0.99

    # Smaller passes (one instance, 16 path points each) give the same attributions.
    small = normalise_params("IntegratedGradients", {"steps": 50, "internalBatchSize": 16}, has_image=True)
    again = EXPLAINER.explain(model, (images[:3], scan[:3]), background, small, seed=0)
    assert again.details["instances_per_call"] == 1
    np.testing.assert_allclose(again.features, out.features[:3], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- own engine


class _SmallConvNet(nn.Module):
    """A smooth two-input classifier: conv branch on a 6x6 image + a tabular branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.SiLU()
        )
        self.tab = nn.Linear(3, 4)
        self.head = nn.Linear(4 * 3 * 3 + 4, 5)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image).flatten(1), torch.tanh(self.tab(tabular))], dim=1))


def _conv_case(seed: int = 0, n: int = 6) -> tuple[ExplainedModel, tuple, tuple]:
    torch.manual_seed(seed)
    net = _SmallConvNet().double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # sharper than at init: a path integral that needs real work
    modalities = [
        Modality("image", "image", tuple(f"px{i}" for i in range(36)), (1, 6, 6)),
        Modality("tabular", "tabular", ("a", "b", "c"), (3,)),
    ]
    model = ExplainedModel(net, modalities, "multiclass", [str(c) for c in range(5)])
    inputs = (torch.rand(n, 1, 6, 6, dtype=torch.float64) * 2, torch.randn(n, 3, dtype=torch.float64))
    background = (torch.rand(20, 1, 6, 6, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64))
    return model, inputs, background


def _ig_params(**overrides: object) -> dict:
    return {
        "steps": 50,
        "integrationMethod": "gausslegendre",
        "baseline": None,
        "internalBatchSize": None,
    } | overrides


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_captum_rules_give_captums_attributions(method: str) -> None:
    """Same nodes and weights as captum: the same attributions, through our own passes
    (channels-last convolutions, float64 accumulation)."""
    from captum.attr import IntegratedGradients

    model, inputs, background = _conv_case()
    out = EXPLAINER.explain(model, inputs, background, _ig_params(steps=9, integrationMethod=method), seed=0)
    assert out.details["channels_last"]
    baselines = (torch.zeros_like(inputs[0]), background[1].mean(0).expand_as(inputs[1]).contiguous())
    theirs = IntegratedGradients(model.scores).attribute(
        inputs, baselines, target=torch.from_numpy(out.targets), n_steps=9, method=method
    )
    # captum rounds its step sizes to float32 (2e-8 relative); ours stay float64.
    np.testing.assert_allclose(out.features, model.flatten(theirs).numpy(), rtol=1e-6, atol=1e-12)


def test_adaptive_rule_meets_its_completeness_tolerance() -> None:
    model, inputs, background = _conv_case(seed=1, n=8)
    inputs = tuple(6.0 * t for t in inputs)  # far from the baseline: some paths need refining
    reference = EXPLAINER.explain(model, inputs, background, _ig_params(steps=400), seed=0)
    params = _ig_params(steps=256, integrationMethod="gausslegendre_adaptive", completenessTolerance=1e-5)
    out = EXPLAINER.explain(model, inputs, background, params, seed=0)
    delta = out.outputs - out.baselines
    error = np.abs(out.features.sum(1) - delta) / np.maximum(np.abs(delta), 1e-6)
    assert out.per_instance["converged"].all()
    assert error.max() <= 1e-5
    assert (out.per_instance["completeness_gap_bound"] <= 1e-5 * np.maximum(np.abs(delta), 1e-6)).all()
    evaluations = out.per_instance["gradient_evaluations"]
    assert (evaluations >= 16).all() and (evaluations <= 256).all() and evaluations.max() > 16
    l1 = np.abs(out.features - reference.features).sum(1) / np.abs(reference.features).sum(1)
    assert l1.max() < 1e-3  # the per-feature error stays small too
    assert out.resolved_params["completenessTolerance"] == 1e-5


def test_adaptive_rule_stops_at_its_evaluation_cap() -> None:
    model, inputs, background = _conv_case(seed=2, n=3)
    inputs = tuple(6.0 * t for t in inputs)
    capped = _ig_params(steps=24, integrationMethod="gausslegendre_adaptive", completenessTolerance=1e-12)
    out = EXPLAINER.explain(model, inputs, background, capped, seed=0)
    assert not out.per_instance["converged"].any()
    assert (out.per_instance["gradient_evaluations"] <= 24).all()
    tiny = _ig_params(steps=10, integrationMethod="gausslegendre_adaptive", completenessTolerance=0.5)
    out = EXPLAINER.explain(model, inputs, background, tiny, seed=0)  # one panel of 10 nodes
    assert (out.per_instance["gradient_evaluations"] == 10).all() and (out.per_instance["panels"] == 1).all()
    fixed = EXPLAINER.explain(model, inputs, background, _ig_params(steps=10), seed=0)
    np.testing.assert_allclose(out.features, fixed.features, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["gausslegendre", "gausslegendre_adaptive"])
def test_row_partition_and_threads_do_not_change_the_bits(method: str) -> None:
    model, inputs, background = _conv_case(seed=3, n=7)
    model.module.float()
    model = ExplainedModel(model.module, model.modalities, "multiclass", model.class_names)
    inputs = tuple(t.float() for t in inputs)
    params = _ig_params(steps=32, integrationMethod=method, completenessTolerance=1e-4, internalBatchSize=32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        whole = EXPLAINER.explain(model, inputs, background, params, seed=0, n_global=7)
        parts = [
            EXPLAINER.explain(model, tuple(t[lo:hi] for t in inputs), background, params, seed=0, n_global=7)
            for lo, hi in ((0, 3), (3, 4), (4, 7))
        ]
        torch.set_num_threads(1)
        single = EXPLAINER.explain(model, inputs, background, params, seed=0, n_global=7)
    finally:
        torch.set_num_threads(before)
    assert whole.details["forward_backward_passes"] > 1
    assert np.array_equal(whole.features, np.concatenate([p.features for p in parts]))
    assert np.array_equal(whole.features, single.features)


def test_the_model_keeps_its_memory_layout_and_weights() -> None:
    model, inputs, background = _conv_case(seed=4, n=2)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    EXPLAINER.explain(model, inputs, background, _ig_params(steps=4), seed=0)
    for name, value in model.module.state_dict().items():
        assert value.is_contiguous(), name
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("tolerance", [0.0, 1.5])
def test_adaptive_tolerance_must_be_a_fraction(tolerance: float) -> None:
    from include.explainers.errors import ParameterError

    model, inputs, background = _conv_case(n=1)
    params = _ig_params(integrationMethod="gausslegendre_adaptive", completenessTolerance=tolerance)
    with pytest.raises(ParameterError):
        EXPLAINER.explain(model, inputs, background, params, seed=0)


@pytest.mark.parametrize(
    ("most", "tasks", "expected"),
    [(10, 32, 8), (5, 32, 5), (50, 3, 3), (1, 5, 1), (0, 5, 1), (7, 7, 7), (8, 9, 5)],
)
def test_tasks_are_spread_evenly_over_the_passes(most: int, tasks: int, expected: int) -> None:
    from include.explainers.integrated_gradients import balanced_tasks_per_pass

    assert balanced_tasks_per_pass(most, tasks) == expected


def _refined_adaptive_case() -> tuple[ExplainedModel, tuple, tuple, dict]:
    """An adaptive job whose later rounds refine a few panels (calls with a partly filled pass)."""
    model, inputs, background = _conv_case(seed=6, n=16)
    inputs = tuple(6.0 * t for t in inputs)  # far from the baseline: some panels are refined
    params = _ig_params(
        steps=256,
        integrationMethod="gausslegendre_adaptive",
        completenessTolerance=1e-5,
        internalBatchSize=256,
    )
    return model, inputs, background, params


def test_a_shrunk_last_pass_gives_the_same_attributions_for_less_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU-only shrinking of a call's last pass (forced here on the CPU): the adaptive rule's
    later rounds evaluate only the tasks they have (to the next power of two), same results."""
    from include.explainers import integrated_gradients

    model, inputs, background, params = _refined_adaptive_case()
    rows: list[int] = []
    hook = model.module.register_forward_pre_hook(  # gradient passes only (not forward-only checks)
        lambda module, args: rows.append(args[0].shape[0]) if args[0].requires_grad else None
    )
    try:
        padded = EXPLAINER.explain(model, inputs, background, params, seed=0)
        padded_rows, rows[:] = sum(rows), []
        monkeypatch.setattr(integrated_gradients, "shrinks_last_pass", lambda device: True)
        shrunk = EXPLAINER.explain(model, inputs, background, params, seed=0)
        shrunk_rows = sum(rows)
    finally:
        hook.remove()
    np.testing.assert_allclose(shrunk.features, padded.features, rtol=1e-9, atol=1e-12)
    assert shrunk.details["forward_backward_passes"] == padded.details["forward_backward_passes"]
    assert shrunk_rows < padded_rows, (shrunk_rows, padded_rows)  # 640 vs 768 rows here
    # The work record counts what the hook saw.
    assert (shrunk.details["work"]["gradient_rows"], padded.details["work"]["gradient_rows"]) == (
        shrunk_rows,
        padded_rows,
    )
    assert padded.details["work"]["compiled_gradient_rows"] == 0
    assert padded.details["work"]["forward_check_rows"] > 0


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_passes_keep_one_shape_and_shrunk_passes_run_eager(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With compile, the shrunk last passes (forced here on the CPU) run eager: the compiled graph
    sees the job's pass shape only (a second shape would recompile: an error here), and the
    attributions agree with the eager run's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from include.explainers import integrated_gradients

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two pass workers
    try:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
        monkeypatch.setattr(integrated_gradients, "shrinks_last_pass", lambda device: True)
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        torch._dynamo.reset()
        counters.clear()
        model, inputs, background, params = _refined_adaptive_case()
        eager = EXPLAINER.explain(model, inputs, background, params, seed=0)
        compiled = EXPLAINER.explain(model, inputs, background, {**params, "compile": True}, seed=0)
        work = compiled.details["work"]
        assert work["gradient_rows"] == eager.details["work"]["gradient_rows"]
        assert 0 < work["compiled_gradient_rows"] < work["gradient_rows"]
        np.testing.assert_allclose(compiled.features, eager.features, rtol=1e-4, atol=1e-6)
        assert counters["stats"]["unique_graphs"] == 1  # compiled once, not once per worker
    finally:
        torch.set_num_threads(threads)


def test_the_first_compiled_pass_runs_alone_so_the_model_compiles_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two pass workers entering the not-yet-compiled function at once made dynamo compile it
    twice ("Unexpected recompilation": two graphs); the first compiled pass now runs alone."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two pass workers
    try:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
        torch._dynamo.reset()
        counters.clear()
        model, inputs, background = _conv_case(seed=3, n=6)
        params = _ig_params(steps=16, internalBatchSize=32)  # 96 rows: 3 passes of 32
        eager = EXPLAINER.explain(model, inputs, background, params, seed=0)
        compiled = EXPLAINER.explain(model, inputs, background, {**params, "compile": True}, seed=0)
        assert compiled.details["work"]["compiled_gradient_rows"] == 96
        assert counters["stats"]["unique_graphs"] == 1
        np.testing.assert_allclose(compiled.features, eager.features, rtol=1e-4, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_gpu_pass_size_is_probed_once_per_model_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU pass size: the budget over (peak bytes per probe row x headroom), a power of two;
    the probe pass runs once per (device, precision) and later calls reuse its figure. No GPU
    here: torch.cuda's memory counters are replaced by a ledger the probe's own allocations
    cannot move, so only the arithmetic and the caching are under test."""
    from include.explainers import integrated_gradients as ig

    model, _, _ = _conv_case()
    probes: list[str] = []
    real_scores = model.scores
    monkeypatch.setattr(model, "scores", lambda *inputs: (probes.append("probe"), real_scores(*inputs))[1])
    peak = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1000 + peak["bytes"])
    budget = {"bytes": 10_000_000}
    monkeypatch.setattr(ig, "cuda_memory_budget_bytes", lambda device: budget["bytes"])
    peak["bytes"] = ig.CUDA_PROBE_ROWS * 1000  # 1000 bytes per row, x 1.5 headroom
    assert ig.cuda_pass_rows(model, "fp32") == 4096  # floor_pow2(10e6 / 1500) = 4096
    assert probes == ["probe"]
    peak["bytes"] = 0  # a second probe would now measure 1 byte per row
    budget["bytes"] = 3_000_000  # less free memory: the cached per-row figure meets the new budget
    assert ig.cuda_pass_rows(model, "fp32") == 1024
    assert probes == ["probe"]
    ig.cuda_pass_rows(model, "bf16")  # another precision: probed anew
    assert probes == ["probe", "probe"]


def test_forward_only_chunks_are_fixed_on_the_cpu_and_fitted_on_a_gpu() -> None:
    """f(x), f(x') and the adaptive rule's checks: PREDICT_CHUNK_ROWS rows per chunk on the CPU
    (one shape: bit-identical shards); on a GPU the power of two covering what is there, at
    most a gradient pass's rows (no GPU is needed: only the device's type is read)."""
    from include.explainers.base import PREDICT_CHUNK_ROWS
    from include.explainers.integrated_gradients import forward_chunk_rows

    model, _, _ = _conv_case()
    assert [forward_chunk_rows(model, 512, rows) for rows in (3, 64, 1000)] == [PREDICT_CHUNK_ROWS] * 3
    model.device = torch.device("cuda")
    assert [forward_chunk_rows(model, 512, rows) for rows in (1, 3, 64, 65, 1000)] == [1, 4, 64, 128, 512]
    assert forward_chunk_rows(model, 400, 1000) == 256  # a pass of 400 rows: chunks of 256
