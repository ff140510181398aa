"""The two sample models: architectures and their (really trained, deterministic) training.

Both networks take RAW feature values: the tabular standardisation is stored as registered
buffers and the image scaling (0..16 -> 0..1) is a constant inside ``forward``, so explanations
are about the values a user sees in the feature store, not about normalised ones. Activations
are SiLU (smooth) so gradients along an Integrated Gradients path are smooth too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from include.explainers.base import Modality
from include.samples import datasets

TABULAR_MODEL = "diagnosis-risk-tabular"
MULTIMODAL_MODEL = "multimodal-image-classifier-v3"
SAMPLE_VERSION = "1"
TRAIN_SEED = 1234
PIXEL_SCALE = 16.0  # digits pixels are 0..16


class TabularMLP(nn.Module):
    """``n_features -> hidden... -> 1`` logit, with the input standardisation inside."""

    def __init__(self, n_features: int = 10, hidden: tuple[int, ...] | list[int] = (32, 16)) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.feature_mean) / self.feature_std)


class MultimodalDigitNet(nn.Module):
    """An 8x8 image branch (small CNN) fused with a tabular branch -> class logits.

    ``forward(image, tabular)``: image ``(B, 1, 8, 8)`` raw 0..16, tabular ``(B, n_tabular)`` raw.
    """

    def __init__(
        self, n_tabular: int = 4, n_classes: int = 10, channels: tuple[int, int] | list[int] = (8, 16)
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.register_buffer("tabular_mean", torch.zeros(n_tabular))
        self.register_buffer("tabular_std", torch.ones(n_tabular))
        self.image_branch = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1),  # 8x8 -> 4x4
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, 32),
            nn.SiLU(),
        )
        self.tabular_branch = nn.Sequential(nn.Linear(n_tabular, 16), nn.SiLU())
        self.head = nn.Linear(32 + 16, n_classes)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        img = self.image_branch(image / PIXEL_SCALE)
        tab = self.tabular_branch((tabular - self.tabular_mean) / self.tabular_std)
        return self.head(torch.cat([img, tab], dim=1))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "TabularMLP": TabularMLP,
    "MultimodalDigitNet": MultimodalDigitNet,
}


def build_architecture(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture (``KeyError`` names the known ones)."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


# ----------------------------------------------------------------------------- input specs


def tabular_modalities() -> list[Modality]:
    return [
        Modality("tabular", "tabular", tuple(datasets.TABULAR_FEATURES), (len(datasets.TABULAR_FEATURES),))
    ]


def multimodal_modalities() -> list[Modality]:
    side = datasets.IMAGE_SIDE
    return [
        Modality("image", "image", tuple(datasets.PIXEL_FEATURES), (1, side, side)),
        Modality("tabular", "tabular", tuple(datasets.SCAN_FEATURES), (len(datasets.SCAN_FEATURES),)),
    ]


def multimodal_frame() -> Any:
    """Pixels and scan features joined on ``image_id`` (one row per image)."""
    pixels, scan = datasets.image_frames()
    return pixels.merge(scan.drop(columns=["event_timestamp"]), on=datasets.IMAGE_ENTITY, validate="1:1")


# ----------------------------------------------------------------------------- training


def _split(n: int, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/test index split (so the held-out metric is reproducible)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        k = max(1, round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class _Deterministic:
    """Seed torch, require deterministic kernels and use one thread; restore both after.

    One thread: the networks are tiny, so thread start-up costs more than it saves (about 4x
    slower with 2 threads here), and a single thread makes the reduction order — hence the
    trained weights — independent of the machine's core count.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> torch.Generator:
        self._previous = torch.are_deterministic_algorithms_enabled()
        self._threads = torch.get_num_threads()
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        torch.manual_seed(self.seed)
        return torch.Generator().manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self._previous)
        torch.set_num_threads(self._threads)


def _fit(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    loss_fn: nn.Module,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    n = targets.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(*(x[idx] for x in inputs)), targets[idx])
            loss.backward()
            optimiser.step()
    model.eval()


def train_tabular() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train ``diagnosis-risk-tabular``; returns (model, constructor kwargs, held-out metrics)."""
    frame = datasets.tabular_frame()
    x = frame[datasets.TABULAR_FEATURES].to_numpy(np.float32)
    y = frame[datasets.TABULAR_TARGET].to_numpy(np.int64)
    train_idx, test_idx = _split(len(frame), y, 0.2, TRAIN_SEED)
    kwargs: dict[str, Any] = {"n_features": x.shape[1], "hidden": [32, 16]}
    with _Deterministic(TRAIN_SEED) as generator:
        model = TabularMLP(**kwargs)
        xt = torch.from_numpy(x[train_idx])
        model.feature_mean.copy_(xt.mean(0))
        model.feature_std.copy_(xt.std(0).clamp_min(1e-6))
        _fit(
            model,
            (xt,),
            torch.from_numpy(y[train_idx]).float().unsqueeze(1),
            nn.BCEWithLogitsLoss(),
            epochs=150,
            batch_size=64,
            lr=3e-3,
            generator=generator,
        )
        with torch.inference_mode():
            logits = model(torch.from_numpy(x[test_idx])).squeeze(1)
    predicted = (logits > 0).numpy().astype(np.int64)
    metrics = {
        "heldout_accuracy": float((predicted == y[test_idx]).mean()),
        "n_train": len(train_idx),
        "n_heldout": len(test_idx),
    }
    return model, kwargs, metrics


def train_multimodal() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train ``multimodal-image-classifier-v3``; returns (model, constructor kwargs, metrics)."""
    frame = multimodal_frame()
    side = datasets.IMAGE_SIDE
    images = frame[datasets.PIXEL_FEATURES].to_numpy(np.float32).reshape(-1, 1, side, side)
    tabular = frame[datasets.SCAN_FEATURES].to_numpy(np.float32)
    y = frame[datasets.IMAGE_TARGET].to_numpy(np.int64)
    train_idx, test_idx = _split(len(frame), y, 0.2, TRAIN_SEED)
    kwargs: dict[str, Any] = {"n_tabular": tabular.shape[1], "n_classes": 10, "channels": [8, 16]}
    with _Deterministic(TRAIN_SEED) as generator:
        model = MultimodalDigitNet(**kwargs)
        tt = torch.from_numpy(tabular[train_idx])
        model.tabular_mean.copy_(tt.mean(0))
        model.tabular_std.copy_(tt.std(0).clamp_min(1e-6))
        _fit(
            model,
            (torch.from_numpy(images[train_idx]), tt),
            torch.from_numpy(y[train_idx]),
            nn.CrossEntropyLoss(),
            epochs=25,
            batch_size=64,
            lr=3e-3,
            generator=generator,
        )
        with torch.inference_mode():
            logits = model(torch.from_numpy(images[test_idx]), torch.from_numpy(tabular[test_idx]))
    predicted = logits.argmax(1).numpy()
    metrics = {
        "heldout_accuracy": float((predicted == y[test_idx]).mean()),
        "n_train": len(train_idx),
        "n_heldout": len(test_idx),
    }
    return model, kwargs, metrics


def train_sample_models(force: bool = False) -> dict[str, Path]:
    """Train both sample models into the model store; returns name -> ``model.pt`` path.

    Idempotent: a model whose artifact already exists is left alone unless ``force``.
    Deterministic: fixed seeds, deterministic torch kernels, a seeded split.
    """
    from include.explainers import model_store

    specs = {
        TABULAR_MODEL: ("TabularMLP", train_tabular, tabular_modalities, "binary", ["benign", "malignant"]),
        MULTIMODAL_MODEL: (
            "MultimodalDigitNet",
            train_multimodal,
            multimodal_modalities,
            "multiclass",
            [str(d) for d in range(10)],
        ),
    }
    out: dict[str, Path] = {}
    for name, (architecture, train, modalities, task, classes) in specs.items():
        path = model_store.model_path(name, SAMPLE_VERSION)
        if path.exists() and not force:
            out[name] = path
            continue
        started = time.perf_counter()
        model, kwargs, metrics = train()
        metrics["train_seconds"] = round(time.perf_counter() - started, 3)
        out[name] = model_store.save_model(
            name,
            SAMPLE_VERSION,
            model,
            architecture=architecture,
            kwargs=kwargs,
            modalities=modalities(),
            task=task,
            class_names=classes,
            metrics=metrics,
            entity=datasets.TABULAR_ENTITY if name == TABULAR_MODEL else datasets.IMAGE_ENTITY,
        )
    return out
