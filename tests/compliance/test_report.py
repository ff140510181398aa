"""The HTML compliance report, rendered from a bundle folder shaped like a real run's output."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import urllib.parse
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from include.compliance import build_bundle, verify_directory
from include.compliance.report import ARTICLE_MAP, REPORT_NAME, render_report

# Bundle content is untrusted: these must come out as text, never as markup.
EVIL = '<script>alert("xss")</script>'
EVIL_ATTR = '"><img src=x onerror=alert(1)>'
MODEL_SHA = "b25f94c74b762466a55d65ad3e50bf5caacc42bccd220cc22fe9aa7892172d59"
GIT_COMMIT = "c4232508403cee33ae1d578867c35236381d1336"


def _png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG built with the standard library (so the fixture has real images)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(json.dumps(data, indent=2))


MODEL = {
    "name": "diagnosis-risk-tabular",
    "version": "1",
    "sha256": MODEL_SHA,
    "architecture": "TabularMLP",
    "task": "binary",
}


def _expectation(kind: str, success: bool, column: str | None = None, **result: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"batch_id": "provenance-retrieved_features"}
    if column:
        kwargs["column"] = column
    return {
        "success": success,
        "expectation_config": {"type": kind, "kwargs": kwargs, "meta": {}, "severity": "critical"},
        "result": result,
        "exception_info": {"raised_exception": False, "exception_message": None},
    }


def _explanation(inference_id: str, features: dict[str, float], *, image: bool = False) -> dict[str, Any]:
    players = [{"name": k, "attribution": v} for k, v in features.items()]
    modalities = {"tabular": {"sum": sum(features.values()), "abs_share": 1.0, "share": 1.0}}
    attributions: dict[str, Any] = {"total": sum(features.values()), "features": features}
    if image:
        modalities = {
            "image": {"sum": 1.2, "abs_share": 0.9, "share": 0.95},
            "tabular": {"sum": 0.06, "abs_share": 0.1, "share": 0.05},
        }
        attributions["image"] = {
            "shape": [2, 2],
            "pixels": [[0, 1], [1, 0]],
            "attributions": [[0.0, 0.7], [0.5, 0.0]],
        }
        players = [{"name": "px_r0c1", "attribution": 0.7}, {"name": "px_r1c0", "attribution": 0.5}, *players]
    attributions["modalities"] = modalities
    attributions["players"] = players
    return {
        "inference_id": inference_id,
        "entity": {"column": "patient_id", "value": inference_id},
        "model": MODEL,
        "prediction": {
            "class": "benign",
            "class_index": 0,
            "probability": 0.91,
            "explained_output": {
                "description": "probability of the positive class (malignant)",
                "value": 0.09,
            },
        },
        "method": "KernelSHAP",
        "parameters": {"numSamples": 500},
        "seed": 7,
        "baseline": {"kind": "E_bg[f]", "value": 0.404},
        "inputs": dict.fromkeys(features, 1.0),
        "attributions": attributions,
        "fidelity": {"metric": "min(local_accuracy, stability)", "score": 0.9878, "local_accuracy": 1.0},
    }


CONFIG_YAML = (
    "apiVersion: ai.apexlogic.com/v1alpha1\nkind: ExplainerConfiguration\n"
    "metadata:\n  name: diagnosis-risk-kernelshap\n  namespace: ai-clinical\n"
    f"  annotations:\n    note: '{EVIL}'\n"
    "spec:\n  modelName: diagnosis-risk-tabular\n"
    "  owner:\n    team: clinical-ml\n    email: clinical-ml@example.com\n    costCenter: cc-4711\n"
)


def make_bundle(root: Path) -> Path:
    """The files assemble_bundle() puts in a staging folder, in the shapes the real stages write."""
    root.mkdir(parents=True)
    _write(root / "config.yaml", CONFIG_YAML)
    _write(
        root / "provenance.json",
        {
            "schema_version": 1,
            "feature_service": {"name": "diagnosis_risk_tabular", "owner": "xac-ml-platform@example.org"},
            "registry": {"type": "sql", "project": "xac", "last_updated": "2026-11-27T08:27:16+00:00"},
            "feature_repo": {
                "path": "examples/feature_repo",
                "git": {"in_git_checkout": True, "commit": GIT_COMMIT, "dirty": False},
                "definitions_sha256": {"definitions.py": "d9" * 32},
            },
            "feature_views": [
                {
                    "name": "patient_measurements",
                    "owner": "xac-ml-platform@example.org",
                    "features": ["mean_radius", "mean_texture"],
                    "batch_source": {
                        "path": "/data/patient_measurements.parquet",
                        "sha256": "69" * 32,
                        "size_bytes": 43220,
                        "previous_sha256": "70" * 32,
                        "digest_changed": True,
                    },
                }
            ],
            "entity": {"name": "patient", "join_key": "patient_id", "id_hashing": "HMAC-SHA256"},
            "retrieval": {
                "method": "feast.FeatureStore.get_historical_features (point-in-time join)",
                "timestamp": "2026-11-27T08:28:02+00:00",
                "inference": {"selection": "most_recent", "requested": 2},
                "background": {"strategy": "kmeans", "size": 50, "seed": 7},
            },
            "frames": {
                "inference": {"file": "inference.parquet", "sha256": "06" * 32, "rows": 2, "columns": 4},
                "background": {"file": "background.parquet", "sha256": "e4" * 32, "rows": 561, "columns": 4},
            },
            "validation": {"passed": False, "failures": ["[inference] expect_column_values_to_be_between"]},
            "drift": {
                "compared_with_retrieval": "2026-11-20T08:00:00+00:00",
                "changed_sources": ["patient_measurements"],
                "new_sources": [],
            },
        },
    )
    _write(
        root / "validation.json",
        {
            "feature_service": "diagnosis_risk_tabular",
            "passed": False,
            "entity_key": "patient_id (HMAC-SHA256 with the run salt)",
            "frames": {
                "inference": {
                    "success": False,
                    "suite_name": "diagnosis_risk_tabular",
                    "results": [
                        _expectation("expect_table_row_count_to_be_between", True, observed_value=2),
                        _expectation("expect_column_to_exist", True, "mean_radius"),
                        _expectation(
                            "expect_column_values_to_be_between",
                            False,
                            "mean_radius",
                            unexpected_count=1,
                            partial_unexpected_list=[EVIL],
                        ),
                    ],
                },
                "background": {
                    "success": True,
                    "suite_name": "diagnosis_risk_tabular",
                    "results": [_expectation("expect_column_to_exist", True, "mean_radius")],
                },
            },
        },
    )
    _write(
        root / "fidelity.json",
        {
            "method": "KernelSHAP",
            "metric": "min(local_accuracy, stability)",
            "definition": "local_accuracy = max(0, 1 - |sum(phi) - (f(x) - E_bg[f])| / ...)",
            "aggregate": 0.9878,
            "aggregate_statistic": "mean of the per-instance scores",
            "min": 0.9636,
            "components": {"local_accuracy": 1.0, "stability": 0.9878},
            "instances": 2,
            "per_instance": [
                {"inference_id": "P100150", "score": 1.0, "local_accuracy": 1.0},
                {"inference_id": "IMG1", "score": 0.9636, "local_accuracy": 1.0},
            ],
        },
    )
    _write(
        root / "fidelity_gate.json",
        {
            "alerts": [f"fidelity dropped by 0.0300 since the previous run {EVIL}"],
            "messages": ["fidelity min(local_accuracy, stability) = 0.9878 (threshold 0.85)"],
            "metric": "min(local_accuracy, stability)",
            "passed": True,
            "previous_bundle": {
                "uri": "s3://xac-explanations/diagnosis-risk/runs/r0/",
                "bundle_id": "sha256:ab",
            },
            "previous_score": 1.0178,
            "score": 0.9878,
            "threshold": 0.85,
        },
    )
    _write(
        root / "summary.json",
        {
            "model": MODEL,
            "method": "KernelSHAP",
            "parameters": {"numSamples": 500},
            "seed": 7,
            "instances": 2,
            "explained_output": "probability of the positive class (malignant)",
            "global_importance": {
                "statistic": "mean |attribution| over instances",
                "players": [
                    {"name": "mean_concavity", "mean_abs_attribution": 0.1946},
                    {"name": EVIL_ATTR, "mean_abs_attribution": 0.05},
                ],
            },
            "modalities": {
                "tabular": {"mean_abs_share": 0.55, "mean_sum": -0.12},
                "image": {"mean_abs_share": 0.45},
            },
            "predicted_classes": {"benign": 2},
            "mean_explained_output": 0.27,
            "mean_baseline": 0.40,
        },
    )
    _write(
        root / "run_summary.json",
        {
            "status": "complete",
            "created_at": "2026-11-27T08:28:10+00:00",
            "model": MODEL,
            "method": "KernelSHAP",
            "counts": {"explanations": 2},
            "shard": {"index": 0, "count": 1},
            "runtime": {"total_seconds": 3.3115},
            "libraries": {"python": "3.11.7", "torch": "2.13.0+cpu"},
        },
    )
    _write(
        root / "cost.json",
        {
            "rows": [
                {
                    "BilledCost": 4.13595e-05,
                    "BillingCurrency": "USD",
                    "ConsumedQuantity": 0.0013,
                    "ConsumedUnit": "vCPU-Hours",
                    "ListUnitPrice": 0.031611,
                    "ResourceType": "Local Process",
                    "x_Resource": "CPU",
                    "x_Shard": 0,
                    "x_UsageQuantity": 1.07,
                    "x_RequestQuantity": 1.0,
                    "x_RuntimeSeconds": 4.38,
                }
            ],
            "summary": {
                "budget": 0.25,
                "cost_per_1000_explanations": 0.0232588,
                "currency": "USD",
                "explanations": 2,
                "notes": [
                    "the config requests 0.1 GPU; the local backend allocates none, so no GPU is billed"
                ],
                "per_resource": {"CPU": 4.13595e-05, "RAM": 5.1582e-06},
                "pricing": {
                    "currency": "USD",
                    "effective_date": "2026-11-01",
                    "source": "Illustrative list prices",
                },
                "total": 4.65177e-05,
                "within_budget": True,
            },
        },
    )
    _write(
        root / "explanations" / "P100150.json",
        _explanation("P100150", {"mean_concavity": -0.27, "mean_radius": -0.016, EVIL: 0.019}),
    )
    _write(
        root / "explanations" / "IMG1.json",
        _explanation("IMG1", {"ink_mean": -0.003, "scan_noise": -0.032}, image=True),
    )
    _write(root / "plots" / "global_importance.png", _png(4, 3))
    _write(root / "plots" / "IMG1_saliency.png", _png(3, 3))
    _write(root / "logs" / "explain.log", f"explaining 2 rows\nfeature {EVIL} done\n")
    return root


RUN = {
    "dag_id": "diagnosis-risk-kernelshap",
    "run_id": "manual__2026-11-27T08:27:57+00:00",
    "identity": {"run_type": "DagRunType.MANUAL", "triggering_user": EVIL_ATTR, "bundle_version": GIT_COMMIT},
    "config_name": "diagnosis-risk-kernelshap",
    "config_sha256": hashlib.sha256(CONFIG_YAML.encode()).hexdigest(),  # the bundled config's digest
    "model": "diagnosis-risk-tabular",
    "model_version": "1",
    "started_at": "2026-11-27T08:28:02+00:00",
    "explained": 2,
}


class _Collector(HTMLParser):
    """Elements of the rendered page: section ids, headings, image sources, scripts, event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self.scripts = 0
        self.handlers: list[str] = []
        self._section: str | None = None
        self._in_h2 = False
        self.text_by_section: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.handlers += [name for name in attributes if name.startswith("on")]
        if tag == "script":
            self.scripts += 1
        if tag == "section":
            self._section = attributes.get("id")
            self.text_by_section[self._section or ""] = []
        if tag == "h2":
            self._in_h2 = True
        if tag == "img":
            self.images.append(attributes.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._section is None:
            return
        if self._in_h2:
            self.sections[self._section] = data
        self.text_by_section[self._section].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.text_by_section[section]).split())


def _parse(path: Path) -> tuple[str, _Collector]:
    page = path.read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(page)
    return page, collector


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_report_has_every_section_with_the_bundle_facts(bundle: Path) -> None:
    path = render_report(bundle, run=RUN)
    assert path == bundle / REPORT_NAME
    _, page = _parse(path)
    assert set(page.sections) >= {
        "model",
        "run",
        "provenance",
        "validation",
        "global",
        "instances",
        "fidelity",
        "cost",
        "articles",
        "artifacts",
    }
    model = page.text("model")
    assert "diagnosis-risk-tabular" in model and MODEL_SHA in model and "TabularMLP" in model
    run = page.text("run")
    assert RUN["run_id"] in run and GIT_COMMIT in run and "clinical-ml@example.com" in run
    provenance = page.text("provenance")
    assert GIT_COMMIT in provenance and "69" * 32 in provenance
    assert "changed" in provenance and "patient_measurements" in provenance
    assert "Changed sources patient_measurements" in provenance
    validation = page.text("validation")
    assert "inference FAILED 3 2 1" in validation and "background passed 1 1 0" in validation
    assert "expect_column_values_to_be_between mean_radius critical" in validation
    global_ = page.text("global")
    assert "1 mean_concavity 0.1946" in global_ and "tabular 0.55" in global_
    instances = page.text("instances")
    assert "P100150" in instances and "IMG1" in instances
    assert "mean_concavity: -0.27" in instances  # the largest |attribution| leads, with its sign
    assert "image: 0.9 tabular: 0.1" in instances  # modality shares of the multimodal row
    fidelity = page.text("fidelity")
    assert "Threshold 0.85" in fidelity and "Score 0.9878" in fidelity
    assert "passed: bundle published" in fidelity and "ALERT: fidelity dropped by 0.0300" in fidelity
    assert "sha256:ab" in fidelity
    cost = page.text("cost")
    assert "Total 0.00004652 USD" in cost and "Per 1,000 explanations 0.0232588 USD" in cost
    assert "Budget per run 0.25 USD" in cost and "within budget" in cost and "CPU 0.00004136 USD" in cost


def test_article_table_maps_artifacts_to_provisions(bundle: Path) -> None:
    _, page = _parse(render_report(bundle, run=RUN))
    articles = page.text("articles")
    for provision in (
        "Annex IV",
        "2(c)",
        "Art. 12",
        "Art. 13",
        "Art. 14",
        "Art. 19",
        "Art. 26(6)",
        "Art. 72",
    ):
        assert provision in articles, provision
    for row in ARTICLE_MAP:
        assert row.provisions in articles and row.requirement in articles
    assert "at least six months" in articles and "10 years" in articles
    assert "explanations/*.json present (2)" in articles
    assert "plots/*_saliency.png present (1)" in articles
    assert "manifest.json added when the bundle is signed" in articles
    assert "do not by themselves establish conformity" in articles


def test_untrusted_values_are_escaped(bundle: Path) -> None:
    source, page = _parse(render_report(bundle, run=RUN))
    assert page.scripts == 0 and page.handlers == []
    assert "<script" not in source.lower() and "<img src=x" not in source
    # The hostile strings are shown as text, in the sections they came from.
    assert EVIL in page.text("instances") and EVIL_ATTR in page.text("global")
    # (validation shows the observed values as JSON, so the quotes inside come out backslashed)
    assert "<script>alert(" in page.text("validation")
    assert EVIL in page.text("fidelity") and EVIL_ATTR in page.text("run")
    assert EVIL in page.text("logs") and EVIL in page.text("config")
    assert html_escaped(EVIL) in source
    assert "Content-Security-Policy" in source and "default-src 'none'" in source


def html_escaped(value: str) -> str:
    import html

    return html.escape(value, quote=True)


def test_every_image_exists_in_the_bundle_and_is_relative(bundle: Path) -> None:
    _, page = _parse(render_report(bundle, run=RUN))
    assert sorted(page.images) == ["plots/IMG1_saliency.png", "plots/global_importance.png"]
    for src in page.images:
        relative = urllib.parse.unquote(src)
        assert not relative.startswith(("/", "data:", "http")) and ".." not in relative.split("/")
        assert (bundle / relative).is_file()


def test_symlinked_and_missing_files_are_not_referenced(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    os.symlink(outside, bundle / "plots" / "P100150_saliency.png")
    (bundle / "plots" / "IMG1_saliency.png").unlink()
    source, page = _parse(render_report(bundle, run=RUN))
    assert page.images == ["plots/global_importance.png"]
    assert "P100150_saliency" not in source


def test_missing_and_malformed_files_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    _write(root / "summary.json", "[1, 2")
    _write(root / "cost.json", [1, 2])
    _write(root / "explanations" / "A1.json", _explanation("A1", {"x": 0.5}))
    source, page = _parse(render_report(root))
    for text in (
        "summary.json could not be read as JSON",
        "cost.json is not a JSON object",
        "provenance.json is not in this bundle",
        "fidelity_gate.json is not in this bundle",
        "config.yaml is not in this bundle",
    ):
        assert text in source, text
    assert "x: 0.5" in page.text("instances")
    assert "missing or unreadable" in page.text("cost")
    assert "no run record was given" in page.text("run")
    assert page.images == []


def test_render_is_deterministic_and_reads_the_run_from_a_manifest(bundle: Path) -> None:
    first = render_report(bundle, run=RUN).read_bytes()
    assert render_report(bundle, run=RUN).read_bytes() == first
    _write(bundle / "manifest.json", {"run": RUN | {"run_id": "from-the-manifest"}})
    _, page = _parse(render_report(bundle))
    assert "from-the-manifest" in page.text("run")


def test_artifact_inventory_lists_digests(bundle: Path) -> None:
    _, page = _parse(render_report(bundle, run=RUN))
    artifacts = page.text("artifacts")
    digest = hashlib.sha256((bundle / "plots" / "IMG1_saliency.png").read_bytes()).hexdigest()
    assert (
        f"plots/IMG1_saliency.png {(bundle / 'plots' / 'IMG1_saliency.png').stat().st_size} {digest}"
        in artifacts
    )
    assert REPORT_NAME not in artifacts


def test_report_is_signed_with_the_bundle(bundle: Path, signer: Any) -> None:
    render_report(bundle, run=RUN)
    manifest = build_bundle(bundle, run=RUN, signer=signer)
    assert REPORT_NAME in {entry.path for entry in manifest.files}
    assert verify_directory(bundle, None).ok
    assert not list(bundle.glob(".*.tmp"))
