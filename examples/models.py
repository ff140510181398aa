"""The sample models: architectures and their (really trained, deterministic) training.

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

from examples import datasets
from include.explainers.base import Modality

TABULAR_MODEL = "diagnosis-risk-tabular"
MULTIMODAL_MODEL = "multimodal-image-classifier-v3"
TREE_MODEL = "diagnosis-risk-gbt"
ATTENTION_MODEL = "diagnosis-risk-transformer"
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


class FeatureTokenTransformer(nn.Module):
    """A small transformer over feature tokens (FT-Transformer style) -> one logit.

    Each standardised feature becomes one token (its value times a learned per-feature vector
    plus a per-feature bias); a learned [CLS] token is prepended and the logit is read from it
    after the encoder. ``attention_tokens()`` declares which features each token carries: the
    contract the attention explainer needs to map attention back onto features.
    """

    def __init__(
        self, n_features: int = 10, d_model: int = 16, heads: int = 2, layers: int = 2, ff: int = 32
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.feature_weight = nn.Parameter(torch.randn(n_features, d_model) * 0.5)
        self.feature_bias = nn.Parameter(torch.zeros(n_features, d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=0.0, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def attention_tokens(self) -> list[list[int]]:
        """Feature indices carried by each token: [] for [CLS], [j] for feature j."""
        return [[]] + [[j] for j in range(self.n_features)]

    def attention_readout(self) -> int:
        return 0  # the logit is read from the [CLS] token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.feature_mean) / self.feature_std
        tokens = z.unsqueeze(-1) * self.feature_weight + self.feature_bias
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.encoder(tokens)[:, 0])


class TreeEnsemble(nn.Module):
    """A gradient-boosted tree ensemble (binary: the log-odds), stored as tensors.

    Why tensors rather than the scikit-learn object: the model store keeps only ``state_dict``
    tensors loaded with ``weights_only=True`` (a model file never runs code; a pickled
    estimator would), and every model-agnostic method then evaluates it like any module.
    Node arrays are padded to ``max_nodes`` per tree; a leaf's children point at itself, so
    ``max_depth`` steps of "go left if x[feature] <= threshold" reach every row's leaf
    (scikit-learn's rule; the comparison is done in float64 as scikit-learn does).
    ``value`` holds each leaf's contribution already multiplied by the learning rate, and
    ``base`` the initial raw prediction. Not differentiable (piecewise constant).
    """

    def __init__(
        self, n_features: int = 10, n_trees: int = 1, max_nodes: int = 1, max_depth: int = 1
    ) -> None:
        super().__init__()
        self.n_features, self.max_depth = n_features, max_depth
        self.register_buffer("left", torch.zeros((n_trees, max_nodes), dtype=torch.long))
        self.register_buffer("right", torch.zeros((n_trees, max_nodes), dtype=torch.long))
        self.register_buffer("feature", torch.zeros((n_trees, max_nodes), dtype=torch.long))
        self.register_buffer("threshold", torch.zeros((n_trees, max_nodes), dtype=torch.float64))
        self.register_buffer("value", torch.zeros((n_trees, max_nodes), dtype=torch.float64))
        self.register_buffer("node_weight", torch.zeros((n_trees, max_nodes), dtype=torch.float64))
        self.register_buffer("base", torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.to(torch.float64)
        n_trees, max_nodes = self.left.shape
        # Nodes numbered across all trees (tree t's node k is t * max_nodes + k), so each step is
        # one flat gather per array instead of a (tree, node) fancy index: 1.3x faster on 65,536
        # rows x 100 trees, the same leaves.
        offset = torch.arange(n_trees, device=rows.device)[:, None] * max_nodes
        left, right = (self.left + offset).reshape(-1), (self.right + offset).reshape(-1)
        feature, threshold = self.feature.reshape(-1), self.threshold.reshape(-1)
        node = offset[:, 0][None, :].expand(rows.shape[0], n_trees)
        for _ in range(self.max_depth):
            go_left = rows.gather(1, feature[node]) <= threshold[node]
            node = torch.where(go_left, left[node], right[node])
        return (self.base + self.value.reshape(-1)[node].sum(dim=1)).unsqueeze(1)

    def is_leaf(self) -> torch.Tensor:
        return self.left == torch.arange(self.left.shape[1])[None, :]

    @property
    def tree_count(self) -> int:
        return int(self.left.shape[0])

    def shap_model(self) -> dict[str, Any]:
        """The ensemble in shap's dictionary format (``shap.TreeExplainer`` accepts it)."""
        leaf = self.is_leaf().numpy()
        trees = []
        for t in range(self.left.shape[0]):
            used = self.node_weight[t].numpy() > 0
            count = int(used.sum())  # nodes are stored first, padding after
            trees.append(
                {
                    "children_left": np.where(leaf[t], -1, self.left[t].numpy())[:count],
                    "children_right": np.where(leaf[t], -1, self.right[t].numpy())[:count],
                    "children_default": np.where(leaf[t], -1, self.left[t].numpy())[:count],
                    "features": np.where(leaf[t], -2, self.feature[t].numpy())[:count],
                    "thresholds": self.threshold[t].numpy()[:count].astype(np.float64),
                    "values": self.value[t].numpy()[:count, None].astype(np.float64),
                    "node_sample_weight": self.node_weight[t].numpy()[:count].astype(np.float64),
                }
            )
        return {
            "trees": trees,
            "base_offset": float(self.base.item()),
            "tree_output": "log_odds",
            "objective": "binary_crossentropy",
            "input_dtype": np.float64,
            "internal_dtype": np.float64,
        }


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


def _train_binary_on_measurements(
    architecture: type[nn.Module], kwargs: dict[str, Any], *, epochs: int
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train a binary classifier of the ten measurements (standardisation stored in the model's
    ``feature_mean``/``feature_std`` buffers) on the seeded split; returns (model, kwargs, metrics)."""
    frame = datasets.tabular_frame()
    x = frame[datasets.TABULAR_FEATURES].to_numpy(np.float32)
    y = frame[datasets.TABULAR_TARGET].to_numpy(np.int64)
    train_idx, test_idx = _split(len(frame), y, 0.2, TRAIN_SEED)
    kwargs = {"n_features": x.shape[1], **kwargs}
    with _Deterministic(TRAIN_SEED) as generator:
        model = architecture(**kwargs)
        xt = torch.from_numpy(x[train_idx])
        model.feature_mean.copy_(xt.mean(0))
        model.feature_std.copy_(xt.std(0).clamp_min(1e-6))
        _fit(
            model,
            (xt,),
            torch.from_numpy(y[train_idx]).float().unsqueeze(1),
            nn.BCEWithLogitsLoss(),
            epochs=epochs,
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


def train_tabular() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train ``diagnosis-risk-tabular``; returns (model, constructor kwargs, held-out metrics)."""
    return _train_binary_on_measurements(TabularMLP, {"hidden": [32, 16]}, epochs=150)


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


def tree_ensemble_from_sklearn(model: Any) -> TreeEnsemble:
    """A fitted binary ``GradientBoostingClassifier`` as a :class:`TreeEnsemble` (same log-odds)."""
    estimators = [row[0].tree_ for row in model.estimators_]
    max_nodes = max(t.node_count for t in estimators)
    module = TreeEnsemble(
        n_features=int(model.n_features_in_),
        n_trees=len(estimators),
        max_nodes=max_nodes,
        max_depth=max(int(t.max_depth) for t in estimators),
    )
    with torch.no_grad():
        for k, tree in enumerate(estimators):
            count = tree.node_count
            index = np.arange(count)
            leaf = tree.children_left == -1
            module.left[k, :count] = torch.from_numpy(np.where(leaf, index, tree.children_left))
            module.right[k, :count] = torch.from_numpy(np.where(leaf, index, tree.children_right))
            module.feature[k, :count] = torch.from_numpy(np.where(leaf, 0, tree.feature).astype(np.int64))
            module.threshold[k, :count] = torch.from_numpy(np.where(leaf, 0.0, tree.threshold))
            module.value[k, :count] = torch.from_numpy(tree.value[:, 0, 0] * model.learning_rate)
            module.node_weight[k, :count] = torch.from_numpy(tree.weighted_n_node_samples.astype(np.float64))
            pad = index[-1] + 1
            module.left[k, pad:] = torch.arange(pad, max_nodes)  # padding: unreachable self-loops
            module.right[k, pad:] = torch.arange(pad, max_nodes)
        zero = np.zeros((1, module.n_features))
        trees_sum = sum(float(row[0].predict(zero)[0]) for row in model.estimators_) * model.learning_rate
        module.base[0] = float(model.decision_function(zero)[0]) - trees_sum
    return module.eval()


def train_tree() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train ``diagnosis-risk-gbt``: scikit-learn gradient boosting on the same data and split."""
    from sklearn.ensemble import GradientBoostingClassifier

    frame = datasets.tabular_frame()
    x = frame[datasets.TABULAR_FEATURES].to_numpy(np.float32)
    y = frame[datasets.TABULAR_TARGET].to_numpy(np.int64)
    train_idx, test_idx = _split(len(frame), y, 0.2, TRAIN_SEED)
    gbt = GradientBoostingClassifier(
        n_estimators=100, max_depth=3, learning_rate=0.1, random_state=TRAIN_SEED
    )
    gbt.fit(x[train_idx], y[train_idx])
    module = tree_ensemble_from_sklearn(gbt)
    with torch.inference_mode():
        ours = module(torch.from_numpy(x)).squeeze(1).numpy()
    reference = gbt.decision_function(x)
    gap = float(np.abs(ours - reference).max())
    if gap > 1e-9:  # the conversion must reproduce scikit-learn's predictions, not approximate them
        raise RuntimeError(f"tree ensemble conversion differs from scikit-learn by {gap}")
    kwargs: dict[str, Any] = {
        "n_features": module.n_features,
        "n_trees": int(module.left.shape[0]),
        "max_nodes": int(module.left.shape[1]),
        "max_depth": module.max_depth,
    }
    metrics = {
        "heldout_accuracy": float((gbt.predict(x[test_idx]) == y[test_idx]).mean()),
        "n_train": len(train_idx),
        "n_heldout": len(test_idx),
        "max_abs_gap_to_sklearn": gap,
        "trained_with": "sklearn.ensemble.GradientBoostingClassifier(n_estimators=100, max_depth=3)",
    }
    return module, kwargs, metrics


def train_attention() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train ``diagnosis-risk-transformer`` on the same data and split as the tabular MLP."""
    return _train_binary_on_measurements(
        FeatureTokenTransformer, {"d_model": 16, "heads": 2, "layers": 2, "ff": 32}, epochs=40
    )


def _records_its_code(path: Path) -> bool:
    """Whether the stored model.json names the module of its architecture (older stores did not)."""
    import json

    try:
        return bool(json.loads(path.with_name("model.json").read_text()).get("code"))
    except (OSError, ValueError):
        return False


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
        TREE_MODEL: ("TreeEnsemble", train_tree, tabular_modalities, "binary", ["benign", "malignant"]),
        ATTENTION_MODEL: (
            "FeatureTokenTransformer",
            train_attention,
            tabular_modalities,
            "binary",
            ["benign", "malignant"],
        ),
    }
    out: dict[str, Path] = {}
    for name, (architecture, train, modalities, task, classes) in specs.items():
        path = model_store.model_path(name, SAMPLE_VERSION)
        if path.exists() and not force and _records_its_code(path):
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
            entity=datasets.IMAGE_ENTITY if name == MULTIMODAL_MODEL else datasets.TABULAR_ENTITY,
            differentiable=architecture != "TreeEnsemble",
            code=__name__,
        )
    return out
