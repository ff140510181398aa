"""Decide whether a run's fidelity is good enough to publish.

The explainer writes ``fidelity.json`` with one ``score`` in [0, 1] (higher is better) whose
meaning depends on the method (see README, "What fidelityThreshold means"). The gate:

* fails the run when the score is below ``monitoring.fidelityThreshold``;
* raises an alert (the run still publishes, and the bundle records the alert) when
  ``alertOnFidelityDrop`` is set and the score dropped by more than ``DROP_TOLERANCE`` against
  the last accepted run of the same model;
* with ``monitoring.enabled: false`` records the figures but never fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DROP_TOLERANCE = 0.02


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    score: float | None
    metric: str | None
    threshold: float | None
    previous_score: float | None
    alerts: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_gate(
    fidelity: dict[str, Any],
    *,
    threshold: float | None,
    alert_on_drop: bool,
    previous_score: float | None,
    enabled: bool = True,
) -> GateDecision:
    score = fidelity.get("score")
    metric = fidelity.get("metric")
    messages: list[str] = []
    alerts: list[str] = []
    ok = True
    if score is None or score != score:  # missing or NaN: nothing proves the explanations faithful
        ok = False
        messages.append(f"fidelity score is missing from fidelity.json (metric {metric!r})")
    elif threshold is not None and score < threshold:
        ok = False
        messages.append(f"fidelity {metric} = {score:.4f} is below the threshold {threshold:.4f}")
    else:
        messages.append(f"fidelity {metric} = {score:.4f} (threshold {threshold})")
    if alert_on_drop and score is not None and previous_score is not None:
        if score < previous_score - DROP_TOLERANCE:
            alert = f"ALERT: fidelity dropped from {previous_score:.4f} (last accepted run) to {score:.4f}"
            alerts.append(alert)
            messages.append(alert)
    if not ok and not enabled:
        messages.append("monitoring is disabled for this config: recorded, not enforced")
    return GateDecision(ok or not enabled, score, metric, threshold, previous_score, alerts, messages)
