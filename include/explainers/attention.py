"""AttentionRollout: intrinsic attributions read from a model's own attention layers.

For a model built of ``nn.MultiheadAttention`` layers over tokens (a transformer), attention
rollout (Abnar & Zuidema, 2020) tracks how much of the token the output is read from (e.g.
``[CLS]``) is mixed from each input token through all layers:

* per layer, the attention matrix ``A`` (tokens x tokens) with its heads fused (``headFusion``:
  mean, max or min over heads);
* the residual connection accounted for as ``Â = (A + I) / 2``, rows renormalised to sum to 1;
* ``R = Â_L · ... · Â_1``; the relevance of token ``j`` is ``R[readout, j]``.

Relevances are non-negative and sum to 1 over all tokens: they say *where the model looks*, not
in which direction a feature pushes, and they do not add up to ``f(x) - f(reference)``. Each
token's relevance is spread evenly over the features it carries; the share left on special
tokens (``[CLS]``) is reported per instance as ``special_token_share``.

The contract with the model: attention layers are ``nn.MultiheadAttention`` modules (also inside
``nn.TransformerEncoderLayer``), and the model declares how tokens map to input features with
``attention_tokens() -> list[list[int]]`` (flat feature indices per token, ``[]`` for special
tokens) and optionally ``attention_readout() -> int`` (default 0). A model without attention
layers, or without the token map, is refused before any work: guessing the token order would
produce confident nonsense.

PyTorch's fast path for ``TransformerEncoderLayer`` in inference bypasses the attention module
and never materialises the weights; it is switched off while the weights are read
(``torch.backends.mha.set_fastpath_enabled``), which changes no result, only the kernel.

Fidelity (``gradient_agreement``): attention is not a faithful explanation by construction, so
every run measures how far it agrees with a gradient-based one on the same model: the Spearman
rank correlation, per instance, between the tokens' rollout relevance and the tokens'
``|gradient x input|`` (summed over each token's features), clipped to [0, 1]. A low figure means
the attention map does not point at what moves the output. Deterministic: no randomness.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from include.explainers.base import PREDICT_CHUNK_ROWS, Attributions, ExplainedModel
from include.explainers.errors import MethodNotApplicableError
from include.explainers.params import ATTENTION_ROLLOUT

FUSIONS = {
    "mean": lambda a: a.mean(dim=1),
    "max": lambda a: a.amax(dim=1),
    "min": lambda a: a.amin(dim=1),
}


def attention_layers(module: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]


def token_map(module: nn.Module, n_features: int) -> tuple[list[list[int]], int]:
    """The model's declared (features per token, readout token); raises when it declares none."""
    declare = getattr(module, "attention_tokens", None)
    if not callable(declare):
        raise MethodNotApplicableError(
            f"{ATTENTION_ROLLOUT} needs the model to declare which input features each attention "
            "token carries (a method attention_tokens() -> list of feature-index lists); "
            f"{type(module).__name__} has attention layers but no such declaration"
        )
    tokens = [[int(j) for j in group] for group in declare()]
    readout = int(module.attention_readout()) if callable(getattr(module, "attention_readout", None)) else 0
    covered = sorted(j for group in tokens for j in group)
    if covered != list(range(n_features)):
        raise MethodNotApplicableError(
            f"{type(module).__name__}.attention_tokens() must assign every one of the {n_features} "
            "input features to exactly one token"
        )
    if not 0 <= readout < len(tokens):
        raise MethodNotApplicableError(f"attention_readout() {readout} is not a token index")
    return tokens, readout


@contextlib.contextmanager
def captured_attention(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every attention layer's per-head weights ``(B, H, T, T)`` in execution order."""
    captured: list[torch.Tensor] = []

    def ask_for_weights(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, kwargs | {"need_weights": True, "average_attn_weights": False}

    def keep(_m: nn.Module, _args: tuple, output: Any) -> None:
        captured.append(output[1].detach())

    handles = []
    for layer in attention_layers(module):
        handles.append(layer.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
        handles.append(layer.register_forward_hook(keep))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield captured
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()


def rollout(layers: Sequence[torch.Tensor], fusion: str) -> torch.Tensor:
    """``(B, T, T)`` rollout of per-layer weights ``(B, H, T, T)`` (module docstring)."""
    result: torch.Tensor | None = None
    for weights in layers:
        fused = FUSIONS[fusion](weights.to(torch.float64))
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype).expand_as(fused)
        mixed = (fused + eye) / 2.0
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    assert result is not None
    return result


class AttentionRolloutExplainer:
    """Attention rollout (see the module docstring)."""

    name = ATTENTION_ROLLOUT

    def check_model(self, model: ExplainedModel) -> None:
        if not attention_layers(model.module):
            raise MethodNotApplicableError(
                f"{ATTENTION_ROLLOUT} reads a model's attention layers, and "
                f"{type(model.module).__name__} has none (no nn.MultiheadAttention module)"
            )
        token_map(model.module, model.n_features)

    def explain(
        self,
        model: ExplainedModel,
        inputs: tuple[torch.Tensor, ...],
        background: tuple[torch.Tensor, ...],
        params: dict[str, Any],
        seed: int,
        instance_seeds: Sequence[int] | None = None,
        *,
        n_global: int | None = None,
    ) -> Attributions:
        started = time.perf_counter()
        fusion = str(params.get("headFusion", "mean"))
        tokens, readout = token_map(model.module, model.n_features)
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n, n_features = x.shape
        relevance = np.zeros((n, len(tokens)))
        scores = torch.empty((n, model.n_outputs), dtype=model.dtype)
        layers_seen = 0
        # Fixed-shape chunks (padded), as everywhere: a row's bits do not depend on its shard.
        with torch.inference_mode(), captured_attention(model.module) as captured:
            for start in range(0, n, PREDICT_CHUNK_ROWS):
                block = x[start : start + PREDICT_CHUNK_ROWS]
                m = block.shape[0]
                if m < PREDICT_CHUNK_ROWS:
                    block = torch.cat([block, block[-1:].expand(PREDICT_CHUNK_ROWS - m, -1)])
                captured.clear()
                scores[start : start + m] = model.scores(*model.split(block))[:m]
                layers_seen = len(captured)
                rolled = rollout(captured, fusion)
                relevance[start : start + m] = rolled[:m, readout, :].numpy()
        targets = model.targets(scores)
        outputs = scores.gather(1, targets.unsqueeze(1)).squeeze(1).to(torch.float64).numpy()
        features = np.zeros((n, n_features))
        feature_player = np.full(n_features, -1, dtype=np.int64)
        player_names: list[str] = []
        feature_tokens = [t for t, group in enumerate(tokens) if group]
        names = model.feature_names()
        for p, t in enumerate(feature_tokens):
            group = tokens[t]
            features[:, group] = relevance[:, [t]] / len(group)
            feature_player[group] = p
            player_names.append(names[group[0]] if len(group) == 1 else f"token {t}")
        special = [t for t, group in enumerate(tokens) if not group]
        gradient_tokens = self._gradient_x_input(model, x, targets, tokens, feature_tokens)
        return Attributions(
            method=ATTENTION_ROLLOUT,
            player_names=player_names,
            players=relevance[:, feature_tokens],
            features=features,
            feature_player=feature_player,
            outputs=outputs,
            baselines=outputs.copy(),
            baseline_kind=(
                "none: attention rollout has no reference point; relevances are shares of the readout "
                "token's mixing and sum to 1 with the special tokens (the value repeats f(x))"
            ),
            targets=targets.numpy(),
            resolved_params={"headFusion": fusion},
            per_instance={
                "special_token_share": relevance[:, special].sum(axis=1),
                "gradient_x_input_per_token": gradient_tokens,
            },
            details={
                "attention_layers": layers_seen,
                "tokens": len(tokens),
                "readout_token": readout,
                "seconds": time.perf_counter() - started,
            },
        )

    @staticmethod
    def _gradient_x_input(
        model: ExplainedModel,
        x: torch.Tensor,
        targets: torch.Tensor,
        tokens: list[list[int]],
        feature_tokens: list[int],
    ) -> np.ndarray:
        """``|gradient x input|`` summed per feature token: the fidelity reference (docstring)."""
        n = x.shape[0]
        out = np.zeros((n, len(feature_tokens)))
        for start in range(0, n, PREDICT_CHUNK_ROWS):
            block = x[start : start + PREDICT_CHUNK_ROWS].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                chosen = model.scores(*model.split(block)).gather(
                    1, targets[start : start + PREDICT_CHUNK_ROWS].unsqueeze(1)
                )
                (grad,) = torch.autograd.grad(chosen.sum(), block)
            contribution = (grad * block).abs().detach().to(torch.float64).numpy()
            for p, t in enumerate(feature_tokens):
                out[start : start + block.shape[0], p] = contribution[:, tokens[t]].sum(axis=1)
        return out


EXPLAINER = AttentionRolloutExplainer()
