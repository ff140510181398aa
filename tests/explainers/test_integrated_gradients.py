"""Integrated Gradients against ground truth (linear closed form) and completeness."""

from __future__ import annotations

import numpy as np
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
    from include.explainers.model_store import load_model
    from include.samples.datasets import PIXEL_FEATURES, SCAN_FEATURES

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
