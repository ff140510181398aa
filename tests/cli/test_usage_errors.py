"""Hostile and mistaken inputs to `xac` (issue 18, item 14): a usage error exits 2, and no message is
only a Python exception's type name (``RecursionError:``, ``AttributeError:``, ``OSError:``); each
names the command and the file, flag or URI that failed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from include.cli.main import main as xac

TYPE_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")

DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_YAML = "x: " + "[" * 5_000 + "]" * 5_000 + "\n"
FINISHED_POD = {
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
    "status": {
        "phase": "Succeeded",
        "startTime": "2025-01-01T00:00:00Z",
        "containerStatuses": [{"name": "c", "state": {"terminated": {"finishedAt": "2025-01-01T01:00:00Z"}}}],
    },
}


def _file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert not TYPE_NAME.search(err), err
    return err


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("XAC_PROMETHEUS_URL", raising=False)  # no usage source is asked
    return _file(tmp_path, "pod.json", json.dumps(FINISHED_POD))


@pytest.mark.parametrize("flag", ["--pod", "--usage", "--node", "--cluster-profile"])
def test_cost_input_too_deeply_nested_is_a_usage_error(
    flag: str, pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = _file(tmp_path, "deep.json", DEEP_JSON)
    argv = ["cost", "--pod", str(deep)] if flag == "--pod" else ["cost", "--pod", str(pod), flag, str(deep)]
    assert xac(argv) == 2
    err = _err(capsys)
    assert f"{deep}: too deeply nested" in err and err.startswith("xac cost: ")


@pytest.mark.parametrize(("name", "content"), [("deep.json", DEEP_JSON), ("deep.yaml", DEEP_YAML)])
def test_cost_pricing_too_deeply_nested_is_a_usage_error(
    name: str, content: str, pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pricing = _file(tmp_path, name, content)
    assert xac(["cost", "--pod", str(pod), "--pricing", str(pricing)]) == 2
    assert f"xac cost: pricing {pricing}: too deeply nested" in _err(capsys)


def test_cost_pricing_that_is_not_yaml_is_a_usage_error(
    pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pricing = _file(tmp_path, "pricing.yaml", "[1, 2\n")
    assert xac(["cost", "--pod", str(pod), "--pricing", str(pricing)]) == 2
    assert f"xac cost: pricing {pricing}: not valid YAML" in _err(capsys)


@pytest.mark.parametrize("flag", ["--pod", "--pricing"])
def test_cost_input_that_is_not_utf8_is_a_usage_error(
    flag: str, pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = _file(tmp_path, "binary.yaml", b"\xff\xfe\x00bad")
    argv = (
        ["cost", "--pod", str(binary)] if flag == "--pod" else ["cost", "--pod", str(pod), flag, str(binary)]
    )
    assert xac(argv) == 2
    assert f"{binary}: not UTF-8 text" in _err(capsys)


@pytest.mark.parametrize(
    ("catalogue", "field"),
    [
        ("prices: [1]\n", "prices"),
        ("prices: {CPU: 1, RAM: 1}\ngpuModels: [1]\n", "gpuModels"),
        ("prices: {CPU: 1, RAM: 1}\ngpuModels: {a100: 3}\n", "gpuModels"),
    ],
)
def test_cost_pricing_of_the_wrong_shape_names_the_field(
    catalogue: str, field: str, pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pricing = _file(tmp_path, "pricing.yaml", catalogue)
    assert xac(["cost", "--pod", str(pod), "--pricing", str(pricing)]) == 2
    assert f"{pricing}: {field}: expected a mapping" in _err(capsys)


def test_cost_pod_of_the_wrong_shape_names_the_command_and_the_pod(
    pod: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _file(tmp_path, "broken.json", json.dumps(FINISHED_POD | {"spec": {"containers": 5}}))
    assert xac(["cost", "--pod", str(broken)]) == 3
    err = _err(capsys)
    assert err.startswith(f"xac cost: could not run (input: {broken})"), err


@pytest.mark.parametrize(
    ("content", "problem"), [(b"\xff\xfe\x00bad", "not UTF-8 text"), (DEEP_YAML, "too deeply nested")]
)
def test_bundle_verify_with_an_unreadable_public_key_names_the_key(
    content: str | bytes, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _file(tmp_path, "keyring.yaml", content)
    assert xac(["bundle", "verify", str(tmp_path), "--public-key", str(key)]) == 3
    assert f"xac bundle verify: public key {key}: {problem}" in _err(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["bundle", "list", "--since", "yesterday"],
        ["bundle", "presign", "s3://bucket/bundles/x", "--expires", "-5"],
        ["bundle", "presign", "s3://bucket/bundles/x", "--expires", str(8 * 24 * 3600)],
        ["bundle", "verify", "somewhere", "--chain", "--max-depth", "-1"],
    ],
)
def test_bad_flag_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        xac(argv)
    assert exited.value.code == 2
    err = _err(capsys)
    assert f"argument {argv[-2]}:" in err and argv[-1] in err


def test_config_validate_of_a_path_that_is_not_there_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert xac(["config", "validate", str(missing)]) == 2
    assert f"xac config validate: {missing}: no such file or folder" in _err(capsys)


def _failing_cost(exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    def cost(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr("include.cli.main.cmd_cost", cost)
    monkeypatch.delenv("XAC_DEBUG", raising=False)


def test_an_oserror_on_a_given_file_names_it_and_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    given = tmp_path / "pod.json"
    _failing_cost(PermissionError(13, "Permission denied", str(given)), monkeypatch)
    assert xac(["cost", "--pod", str(given)]) == 2
    assert f"xac cost: {given}: Permission denied" in _err(capsys)


def test_an_oserror_on_another_file_names_it_and_could_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_cost(OSError(28, "No space left on device", "/var/cache/xac/state"), monkeypatch)
    assert xac(["cost", "--pod", str(tmp_path / "pod.json")]) == 3
    err = _err(capsys)
    assert "xac cost: cannot access /var/cache/xac/state: No space left on device" in err
    assert str(tmp_path / "pod.json") in err


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (AttributeError("'list' object has no attribute 'get'"), "'list' object has no attribute 'get'"),
        (KeyError("spec"), "missing field 'spec'"),
        (RuntimeError(), "an unexpected internal error"),
        (OSError("connection reset"), "connection reset"),
    ],
)
def test_an_unexpected_error_names_the_command_and_its_input(
    exc: Exception,
    detail: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _failing_cost(exc, monkeypatch)
    pod = tmp_path / "pod.json"
    assert xac(["cost", "--pod", str(pod)]) == 3
    assert f"xac cost: could not run (input: {pod}): {detail}" in _err(capsys)


def test_recursion_anywhere_names_the_input_and_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_cost(RecursionError("maximum recursion depth exceeded"), monkeypatch)
    pod = tmp_path / "pod.json"
    assert xac(["cost", "--pod", str(pod)]) == 2
    assert f"xac cost: input too deeply nested to read: {pod}" in _err(capsys)


def test_interrupts_and_exits_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_cost(KeyboardInterrupt(), monkeypatch)
    assert xac(["cost", "--pod", str(tmp_path / "pod.json")]) == 130
    _failing_cost(SystemExit(7), monkeypatch)
    with pytest.raises(SystemExit):
        xac(["cost", "--pod", str(tmp_path / "pod.json")])
