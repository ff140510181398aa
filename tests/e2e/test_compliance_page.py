"""The compliance page in the Airflow UI, driven as a person would in headless Chromium.

A real stack (tests/e2e/conftest.py: api-server, scheduler, dag-processor, triggerer; LocalExecutor) runs a
sample DAG triggered through the REST API, so the page shows a bundle of a finished run. Debian's
``/usr/bin/chromium`` (driven by Playwright, no browser download) logs in through Airflow's login form,
opens the page from the nav, finds the run's bundle with its cost and fidelity, verifies it, follows every
presigned link of the download page (the bytes must verify offline), opens the report, and saves
screenshots as test artifacts (``$XAC_TEST_ARTIFACTS``, else ``$XAC_HOME/artifacts``; the paths are
printed). The plugin's endpoints refuse requests without a valid Airflow token.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
DAG_ID = "diagnosis-risk-kernelshap"
PREFIX = "/xac-compliance"
RUN_TIMEOUT_S = 240.0


def _artifacts_dir() -> Path:
    from include.paths import xac_home

    root = Path(os.environ.get("XAC_TEST_ARTIFACTS") or xac_home() / "artifacts") / "compliance_page"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def finished_run(airflow_stack: Any) -> dict[str, Any]:
    """A successful REST-triggered run of the sample DAG (its bundle is in S3)."""
    from examples.datasets import tabular_frame

    ids = [str(i) for i in tabular_frame()["patient_id"].tolist()[5:7]]
    unpaused = airflow_stack.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    assert unpaused.status_code == 200, unpaused.text
    response = airflow_stack.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"inference_ids": ids, "sample_budget": 200}},
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        run = airflow_stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
        if run["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still {run['state']} after {RUN_TIMEOUT_S:.0f}s")
        time.sleep(1.0)
    assert run["state"] == "success", airflow_stack.log_tail("scheduler", 40)
    return dict(run)


def test_plugin_endpoints_refuse_requests_without_a_valid_token(airflow_stack: Any) -> None:
    import httpx

    from include.compliance_ui import bundle_ref

    base = airflow_stack.base_url + PREFIX
    some_bundle = bundle_ref("s3://xac-explanations/anything/runs/x/")
    paths = [
        "/",
        "/api/bundles",
        f"/bundles/{some_bundle}/download",
        f"/bundles/{some_bundle}/files/report.html",
    ]
    for path in paths:
        assert httpx.get(base + path, timeout=10).status_code == 401, path
        # A forged or foreign token is refused: the auth manager checks the signature.
        forged = httpx.get(base + path, headers={"Authorization": "Bearer not.a.jwt"}, timeout=10)
        assert forged.status_code == 403, path
        cookie = httpx.get(base + path, cookies={"_token": "not.a.jwt"}, timeout=10)
        assert cookie.status_code == 403, path
    assert httpx.post(base + "/api/verify", params={"uri": "s3://b/p/"}, timeout=10).status_code == 401
    # A browser without a session is sent to Airflow's login page, and back here afterwards.
    page = httpx.get(base + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 302
    login = urljoin(f"{airflow_stack.base_url}/", page.headers["location"])
    assert login.startswith(f"{airflow_stack.base_url}/auth/login?next=")
    assert unquote(login.split("next=", 1)[1]) == f"{base}/"
    # With the token the UI uses, the same endpoint answers.
    listed = httpx.get(
        base + "/api/bundles", headers={"Authorization": f"Bearer {airflow_stack.token()}"}, timeout=10
    )
    assert listed.status_code == 200 and listed.json()["user"] == airflow_stack.username


def test_compliance_page_in_headless_chromium(airflow_stack: Any, finished_run: dict[str, Any]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package 'chromium'); the browser test needs it")
    from playwright.sync_api import sync_playwright

    artifacts = _artifacts_dir()
    run_id = finished_run["dag_run_id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            _drive(context, airflow_stack, run_id, artifacts)
        finally:
            browser.close()


def _drive(context: Any, stack: Any, run_id: str, artifacts: Path) -> None:
    from include.compliance import verify_directory
    from include.compliance.keys import load_public_key
    from include.storage import default_public_key_path

    base = stack.base_url
    page = context.new_page()
    page.set_default_timeout(30_000)

    # 1. Log in through Airflow's own login form (simple auth manager), as a person would.
    page.goto(f"{base}/")
    page.wait_for_url(f"{base}/auth/login**")
    page.get_by_label("Username").fill(stack.username)
    page.get_by_label("Password").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")
    assert "_token" in {cookie["name"] for cookie in context.cookies()}

    # 2. Open the compliance page from the nav: the UI embeds the plugin's page in an iframe.
    page.get_by_role("link", name="Compliance").click()
    page.wait_for_url(f"{base}/plugin/xac-compliance**")
    frame = page.frame_locator(f'iframe[src$="{PREFIX}/"]')
    row = frame.locator(f'tr.bundle[data-run-id="{run_id}"]')
    row.wait_for()
    assert frame.locator(".user").inner_text() == stack.username
    assert "diagnosis-risk-tabular" in frame.locator("section.model h2").first.inner_text()
    cost, fidelity = row.locator("td.cost").inner_text(), row.locator("td.fidelity").inner_text()
    assert cost.endswith("USD") and float(cost.split()[0]) > 0, cost
    assert 0.0 < float(fidelity.split()[0]) <= 1.0, fidelity
    assert row.locator('[data-status="unverified"]').count() == 1

    # 3. Verify on demand; the result stays on the page (cached).
    row.get_by_role("link", name="verify now").click()
    row = frame.locator(f'tr.bundle[data-run-id="{run_id}"]')
    row.locator('[data-status="verified"]').wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts / "compliance_page.png"), full_page=True)

    # 4. Download: the bundle's page of presigned links; fetch every file through its link alone
    #    (no Airflow cookie, no S3 credentials) and verify the bytes offline.
    uri = row.get_attribute("data-uri")
    assert uri is not None
    row.get_by_role("link", name="download").click()
    links = frame.locator("a.file")
    links.first.wait_for()
    files = {a.get_attribute("data-path"): a.get_attribute("href") for a in links.all()}
    assert {"manifest.json", "statement.dsse.json", "report.html"} <= set(files)
    target = artifacts / "downloaded_bundle"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    anonymous = context.browser.new_context()  # a clean browser profile: the link must be enough
    try:
        for path, href in files.items():
            assert path and href and href.startswith(("http://", "https://")) and "Signature=" in href
            response = anonymous.request.get(href)
            assert response.status == 200, (path, response.status)
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(response.body())
    finally:
        anonymous.close()
    report = verify_directory(target, load_public_key(default_public_key_path().read_bytes()))
    assert report.ok, report.problems
    print(f"\ndownloaded bundle {uri} -> {target} (verified, {report.files_checked} files)")

    # 5. The report opens in the browser, images included, from the signed bytes.
    frame.get_by_role("link", name="all bundles").click()
    row = frame.locator(f'tr.bundle[data-run-id="{run_id}"]')
    row.wait_for()
    # Inside the UI the page is a sandboxed iframe without popups: the report opens in that frame.
    with page.expect_event("framenavigated", predicate=lambda f: f.url.endswith("/report.html")) as nav:
        row.get_by_role("link", name="report").click()
    report_frame = nav.value
    report_frame.wait_for_load_state("load")
    assert report_frame.url.startswith(f"{base}{PREFIX}/bundles/")
    assert run_id in report_frame.content()
    images = report_frame.locator("img")
    assert images.count() > 0
    for index in range(images.count()):
        width = images.nth(index).evaluate("img => img.naturalWidth")
        assert width > 0, f"image {images.nth(index).get_attribute('src')} did not load"
    page.screenshot(path=str(artifacts / "report_in_ui.png"))
    # The same report on its own tab (the session cookie is enough), for a full-page screenshot.
    alone = context.new_page()
    alone.goto(report_frame.url)
    assert alone.locator("img").first.evaluate("img => img.naturalWidth") > 0
    alone.screenshot(path=str(artifacts / "report.png"), full_page=True)
    for name in ("compliance_page.png", "report_in_ui.png", "report.png"):
        assert (artifacts / name).stat().st_size > 10_000
        print(f"screenshot: {artifacts / name}")
