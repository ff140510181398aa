from __future__ import annotations

from include.fidelity.gate import evaluate_gate


def test_below_threshold_fails() -> None:
    decision = evaluate_gate(
        {"score": 0.8, "metric": "m"}, threshold=0.85, alert_on_drop=False, previous_score=None
    )
    assert not decision.passed
    assert "below the threshold" in decision.messages[0]


def test_at_or_above_threshold_passes() -> None:
    assert evaluate_gate(
        {"score": 0.85, "metric": "m"}, threshold=0.85, alert_on_drop=True, previous_score=None
    ).passed


def test_drop_against_last_accepted_run_alerts_but_publishes() -> None:
    decision = evaluate_gate(
        {"score": 0.90, "metric": "m"}, threshold=0.85, alert_on_drop=True, previous_score=0.99
    )
    assert decision.passed
    assert decision.alerts and "dropped from 0.9900" in decision.alerts[0]
    quiet = evaluate_gate(
        {"score": 0.90, "metric": "m"}, threshold=0.85, alert_on_drop=False, previous_score=0.99
    )
    assert not quiet.alerts


def test_missing_or_nan_score_fails() -> None:
    assert not evaluate_gate({"metric": "m"}, threshold=0.5, alert_on_drop=False, previous_score=None).passed
    assert not evaluate_gate(
        {"score": float("nan")}, threshold=0.5, alert_on_drop=False, previous_score=None
    ).passed


def test_disabled_monitoring_records_but_does_not_fail() -> None:
    decision = evaluate_gate(
        {"score": 0.1, "metric": "m"}, threshold=0.85, alert_on_drop=False, previous_score=None, enabled=False
    )
    assert decision.passed
    assert any("not enforced" in m for m in decision.messages)
