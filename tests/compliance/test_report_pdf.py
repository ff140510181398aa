"""report.pdf: the compliance report as a PDF beside report.html, read back with pypdf."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from include.compliance import build_bundle, verify_directory
from include.compliance.report import REPORT_NAME, REPORT_PDF_NAME, render_report

from .test_report import EVIL, GIT_COMMIT, MODEL_SHA, RUN, _png, make_bundle

SECTIONS = [
    "At a glance",
    "Model",
    "Run identity",
    "Data provenance",
    "Data validation",
    "Global attributions",
    "Per-instance attributions",
    "Fidelity of the explanations",
    "Cost",
    "Retention",
    "EU AI Act: artifacts and provisions",
    "Artifacts",
    "Logs of the run",
    "Configuration",
]


def _read(path: Path) -> tuple[PdfReader, str]:
    reader = PdfReader(path)
    text = "\n".join(page.extract_text() for page in reader.pages)
    return reader, " ".join(text.split())


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_pdf_has_every_section_with_the_bundle_facts(bundle: Path) -> None:
    render_report(bundle, run=RUN | {"reviewer_note": "Prüfung → bestanden ✓"})
    path = bundle / REPORT_PDF_NAME
    assert path.read_bytes().startswith(b"%PDF-")
    reader, text = _read(path)
    # The HTML's sections, in its order, as the PDF's outline (bookmarks).
    assert [item.title for item in reader.outline] == SECTIONS
    assert reader.metadata is not None and "diagnosis-risk-tabular" in str(reader.metadata.title)
    for fact in (
        MODEL_SHA,  # model
        "TabularMLP",
        RUN["run_id"],  # run identity
        GIT_COMMIT,  # provenance
        "patient_measurements",
        "expect_column_values_to_be_between",  # validation
        "mean_concavity",  # global and per-instance attributions
        "P100150",
        "IMG1",
        "0.9878",  # fidelity
        "passed: bundle published",
        "0.00004652 USD",  # cost
        "Annex IV",  # EU AI Act mapping
        "Art. 12(1), 12(2)",
        "Art. 19(1); Art. 26(6)",
        "at least six months",
        "do not by themselves establish conformity",
        "report.pdf this report, as PDF",
        "Prüfung → bestanden ✓",  # Unicode survives (embedded DejaVu font)
    ):
        assert fact in text, fact
    # Bundle text that looks like markup is printed as text, not interpreted.
    assert "<script>alert(" in text and EVIL.split(">")[0] in text


def test_pdf_embeds_the_bundles_own_images_only(bundle: Path, tmp_path: Path) -> None:
    render_report(bundle, run=RUN)
    reader, text = _read(bundle / REPORT_PDF_NAME)
    assert sum(len(page.images) for page in reader.pages) == 2  # global importance + one saliency map
    assert "plots/global_importance.png (sha256" in text and "plots/IMG1_saliency.png (sha256" in text

    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(7, 7))
    (bundle / "plots" / "IMG1_saliency.png").unlink()
    os.symlink(outside, bundle / "plots" / "IMG1_saliency.png")
    render_report(bundle, run=RUN)
    reader, _ = _read(bundle / REPORT_PDF_NAME)
    assert sum(len(page.images) for page in reader.pages) == 1


def test_pdf_is_deterministic_signed_and_verified(bundle: Path, signer: Any) -> None:
    render_report(bundle, run=RUN)
    first = (bundle / REPORT_PDF_NAME).read_bytes()
    render_report(bundle, run=RUN)
    assert (bundle / REPORT_PDF_NAME).read_bytes() == first
    # Rendering again does not list the previous PDF among the artifacts (the HTML stays identical too).
    html = (bundle / REPORT_NAME).read_text()
    render_report(bundle, run=RUN)
    assert (bundle / REPORT_NAME).read_text() == html

    manifest = build_bundle(bundle, run=RUN, signer=signer)
    assert REPORT_PDF_NAME in {entry.path for entry in manifest.files}
    assert verify_directory(bundle, None).ok
    data = bytearray((bundle / REPORT_PDF_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / REPORT_PDF_NAME).write_bytes(bytes(data))
    report = verify_directory(bundle, None)
    assert not report.ok and report.problems[0].startswith("report.pdf: sha256 mismatch")


def test_partial_bundles_and_huge_values_still_give_a_pdf(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    root.mkdir()
    (root / "summary.json").write_text("[1, 2")
    # One value far longer than a page can hold in a table cell.
    (root / "provenance.json").write_text(
        json.dumps({"retrieval": {"inference": {"ids": [f"P{i:06d}" for i in range(20000)]}}})
    )
    (root / "logs").mkdir()
    (root / "logs" / "explain.log").write_text(
        "x" * 50000 + "\n" + "\n".join(f"line {i}" for i in range(500))
    )
    render_report(root)
    _, text = _read(root / REPORT_PDF_NAME)
    assert "summary.json could not be read as JSON" in text
    assert "cut in the PDF after 6,000 characters" in text
    assert "line 499" in text


def test_a_pdf_that_cannot_be_written_is_a_notice_not_a_failure(bundle: Path) -> None:
    (bundle / ".report.pdf.tmp").mkdir()  # the PDF's temporary file cannot be created
    path = render_report(bundle, run=RUN)
    assert not (bundle / REPORT_PDF_NAME).exists()
    assert "report.pdf could not be produced" in path.read_text()
