"""The compliance page: a FastAPI app that lists, verifies, shares and shows compliance bundles.

The Airflow plugin (``plugins/xac_compliance.py``) mounts it in the api-server and supplies the two
things that need Airflow: who the caller is (Airflow's JWT, validated by the auth manager) and which DAGs
that user may read. Everything else lives here, without Airflow, so the page can be tested on its own.

Routes (relative to the mount point, ``/xac-compliance`` in the plugin):

* ``GET /``: bundles per model (date, run, version, method, cost, fidelity, code version,
  verification status, download and report links);
* ``GET /verify?uri=...``: verify one bundle now (then back to the page); ``GET /api/...``: the same as JSON;
* ``GET /bundles/<ref>/download``: time-limited presigned links to every file of a bundle;
* ``GET /bundles/<ref>/files/<path>``: one file of a bundle (``report.html`` and its images), served only
  when it is listed in the manifest and its bytes match the listed sha256.

Every route requires an authenticated user (Airflow does not protect plugin endpoints); a browser
without a session is sent to the login page, any other client gets 401. A bundle is shown only when its
URI lies under a configured bucket/prefix and the user may read its DAG.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import mimetypes
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from include.compliance.keys import Keyring, KeyringError
from include.compliance_ui.catalog import (
    BundleRow,
    Verification,
    VerificationCache,
    bundle_locations,
    collect_catalog,
    group_by_model,
)

MANIFEST_NAME = "manifest.json"
STATEMENT_NAME = "statement.dsse.json"
REPORT_NAME = "report.html"
# Bundle content is untrusted and served on Airflow's origin: no script may run in it (no script-src,
# and `sandbox` without allow-scripts), so a hostile report.html cannot use the user's session. The
# sandbox keeps the same origin only so that the report's images (same-origin, cookie-authenticated)
# load; without scripts that grants the document nothing.
BUNDLE_FILE_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox allow-same-origin"
)
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'self'"


class NotAuthenticated(Exception):
    """No, or an expired, credential: 401 (a browser is sent to the login page)."""


class Forbidden(Exception):
    """A credential that is not valid, or a user without access: 403."""


@dataclass(frozen=True)
class Principal:
    """The authenticated user: a display name and a filter over DAG ids the user may read."""

    name: str
    readable_dag_ids: Callable[[set[str]], set[str]]


Authenticate = Callable[[Request], Awaitable[Principal]]


@dataclass
class Settings:
    authenticate: Authenticate
    s3_client: Callable[[], Any]
    # The keys bundles may be signed with (several after rotations), or None when none is configured.
    trusted_keys: Callable[[], Keyring | None]
    locations: Callable[[], dict[str, list[str]]] = bundle_locations
    login_url: Callable[[str], str] | None = None
    presign_expires_seconds: int = 3600
    verification: VerificationCache = field(default_factory=VerificationCache)


# --------------------------------------------------------------------------- helpers


def bundle_ref(uri: str) -> str:
    """A URI as one path segment (URL-safe base64), so a report's relative image links resolve."""
    return base64.urlsafe_b64encode(uri.encode()).decode().rstrip("=")


def uri_from_ref(ref: str) -> str:
    try:
        return base64.urlsafe_b64decode(ref + "=" * (-len(ref) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(404, "no such bundle") from None


def _esc(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _within(uri: str, locations: dict[str, list[str]]) -> bool:
    """True when ``uri`` is a bundle under one of the configured bucket/prefixes (no ``..`` tricks)."""
    if not uri.startswith("s3://") or not uri.endswith("/"):
        return False
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not key or any(part in ("", ".", "..") for part in key.rstrip("/").split("/")):
        return False
    return any(key.startswith(prefix) for prefix in locations.get(bucket, []))


class _Manifests:
    """Parsed manifests per bundle URI: bundles are write-once, so a manifest never changes."""

    def __init__(self, limit: int = 256) -> None:
        self._items: dict[str, Any] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, client: Any, uri: str) -> Any:
        from include.compliance import Manifest, ManifestError, parse_s3_uri

        with self._lock:
            if uri in self._items:
                return self._items[uri]
        bucket, prefix = parse_s3_uri(uri)
        try:
            head = client.head_object(Bucket=bucket, Key=f"{prefix}/{STATEMENT_NAME}")
            raw = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_NAME}")["Body"].read()
        except Exception as exc:  # botocore ClientError: missing object or bucket
            raise HTTPException(404, f"{uri} is not a complete bundle") from exc
        del head  # the signature's presence is what makes a bundle complete
        try:
            manifest = Manifest.from_bytes(raw)
        except ManifestError as exc:
            raise HTTPException(502, f"{uri}: unreadable manifest ({exc})") from exc
        with self._lock:
            if len(self._items) >= self._limit:
                self._items.pop(next(iter(self._items)))
            self._items[uri] = manifest
        return manifest


# --------------------------------------------------------------------------- rendering


def _fmt_cost(row: BundleRow) -> str:
    if row.cost_total is None:
        return "-"
    return f"{row.cost_total:.6f} {row.currency or ''}".strip()


def _fmt_fidelity(row: BundleRow) -> str:
    if row.fidelity_score is None:
        return "-"
    return f"{row.fidelity_score:.4f} ({row.fidelity_metric or 'score'})"


def _status_cell(row: BundleRow, result: Verification | None, has_key: bool) -> str:
    verify_link = f'<a href="verify?uri={urllib.parse.quote(row.uri, safe="")}">verify now</a>'
    if not has_key:
        return '<span class="status unknown" data-status="no-key">no trusted public key configured</span>'
    if result is None:
        return f'<span class="status unknown" data-status="unverified">not verified yet</span> {verify_link}'
    if result.ok:
        return (
            f'<span class="status ok" data-status="verified" title="key {_esc(result.key_id)}">'
            "verified</span>"
            f" <small>{result.files_checked} files, {result.bytes_checked:,} bytes</small> {verify_link}"
        )
    problems = "".join(f"<li>{_esc(p)}</li>" for p in result.problems[:10])
    return f'<span class="status bad" data-status="failed">FAILED</span> {verify_link}<ul>{problems}</ul>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} code{font-size:.85em}
.status{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26}.unknown{background:#eaeef2}
.muted{color:#57606a;font-size:.85rem}
"""


def render_page(
    groups: dict[str, list[BundleRow]],
    results: dict[str, Verification | None],
    *,
    user: str,
    has_key: bool,
    key_note: str,
    flagged: int = 0,
) -> str:
    sections = []
    for model, rows in groups.items():
        body = []
        for row in rows:
            ref = bundle_ref(row.uri)
            created = row.created_at.strftime("%Y-%m-%d %H:%M:%S UTC") if row.created_at else "-"
            # Plain text, not a link: the UI embeds this page in a sandboxed iframe that may not
            # navigate the top window, and the run is one click away in the Dags view anyway.
            dag_link = f'<span class="run-id">{_esc(row.run_id)}</span>'
            commit = (row.bundle_version or "")[:12] or None
            body.append(
                f'<tr class="bundle" data-uri="{_esc(row.uri)}" data-run-id="{_esc(row.run_id)}">'
                f"<td>{_esc(created)}</td>"
                f"<td>{dag_link}<br><span class='muted'>{_esc(row.dag_id)}"
                f"{' by ' + _esc(row.triggering_user) if row.triggering_user else ''}</span></td>"
                f"<td>{_esc(row.model_version)}</td><td>{_esc(row.method)}</td>"
                f'<td class="cost">{_esc(_fmt_cost(row))}</td>'
                f'<td class="fidelity">{_esc(_fmt_fidelity(row))}</td>'
                f'<td><code title="{_esc(row.bundle_version)}">{_esc(commit)}</code></td>'
                f'<td class="verification">{_status_cell(row, results.get(row.uri), has_key)}</td>'
                f'<td><a class="download" href="bundles/{ref}/download">download</a></td>'
                # Same frame: Airflow's iframe sandbox has no allow-popups, so target=_blank would
                # be blocked inside the UI.
                f'<td><a class="report" href="bundles/{ref}/files/{REPORT_NAME}">report</a></td>'
                "</tr>"
            )
        sections.append(
            f'<section class="model" data-model="{_esc(model)}"><h2>{_esc(model)}'
            f' <span class="muted">({len(rows)} bundle{"s" if len(rows) != 1 else ""})</span></h2>'
            "<table><thead><tr><th>Date</th><th>Run</th><th>Model version</th><th>Method</th><th>Cost</th>"
            "<th>Fidelity</th><th>Code (commit)</th><th>Verification</th><th>Bundle</th><th>Report</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></section>"
        )
    if not sections:
        sections.append("<p>No compliance bundle has been published yet.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Compliance bundles</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>Compliance bundles</h1>"
        f"<p class='muted'>Signed in as <b class='user'>{_esc(user)}</b>. {_esc(key_note)} "
        "Values come from each bundle's manifest; a bundle is trustworthy once it shows <i>verified</i>. "
        "Offline: <code>xac bundle verify s3://…</code>.</p>"
        f"{''.join(sections)}{_flagged_note(flagged)}</body></html>"
    )


def _flagged_note(flagged: int) -> str:
    if not flagged:
        return ""
    locations, were, them = ("locations", "were", "them") if flagged != 1 else ("location", "was", "it")
    return (
        f'<p class="flagged status bad" data-flagged="{flagged}">{flagged} bundle {locations} could not '
        f"be read (a manifest that is oversized, nested too deeply or not a manifest) and {were} skipped. "
        f"An administrator finds {them} with <code>xac bundle list --include-incomplete</code>.</p>"
    )


def render_download(uri: str, row_id: str | None, links: dict[str, str], expires: int) -> str:
    items = "".join(
        f'<li><a class="file" href="{_esc(url)}" data-path="{_esc(path)}" download>{_esc(path)}</a></li>'
        for path, url in links.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Download bundle</title>"
        f"<style>{STYLE}</style></head><body><p><a href='../../'>&larr; all bundles</a></p>"
        f"<h1>Download bundle</h1><p><code>{_esc(uri)}</code><br>bundle id <code>{_esc(row_id)}</code></p>"
        f"<p>Each link below is a presigned URL valid for {expires // 60} minutes; no Airflow or S3 login "
        "is needed to use it. Save every file keeping the folder layout, then run "
        "<code>xac bundle verify &lt;folder&gt;</code>. "
        "<a class='links-json' href='download?format=json'>All links as JSON</a>.</p>"
        f"<ul class='files'>{items}</ul></body></html>"
    )


# --------------------------------------------------------------------------- the app


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="XAC compliance bundles",
        description="Compliance bundles of every configured model (Explainability-as-Code).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    manifests = _Manifests()

    async def principal(request: Request) -> Principal:
        return await settings.authenticate(request)

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        if _wants_html(request) and settings.login_url is not None:
            return RedirectResponse(settings.login_url(str(request.url)), status_code=302)
        return JSONResponse({"detail": str(exc) or "Not authenticated"}, status_code=401)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return JSONResponse({"detail": str(exc) or "Forbidden"}, status_code=403)

    def _key() -> Keyring | None:
        try:
            return settings.trusted_keys()
        except (OSError, KeyringError):
            return None

    def _visible_rows(user: Principal) -> tuple[list[BundleRow], int]:
        """The rows the user may read, and how many locations were flagged as unreadable (a count
        only: an unreadable manifest names no DAG, so nothing of it is shown to anyone here)."""
        catalog = collect_catalog(settings.s3_client(), settings.locations())
        allowed = user.readable_dag_ids({r.dag_id for r in catalog.rows if r.dag_id})
        return [r for r in catalog.rows if r.dag_id in allowed], len(catalog.flagged)

    def _authorised_bundle(user: Principal, uri: str) -> Any:
        """The manifest of ``uri`` when it is a configured bundle of a DAG the user may read; else 404."""
        if not _within(uri, settings.locations()):
            raise HTTPException(404, "no such bundle")
        manifest = manifests.get(settings.s3_client(), uri)
        dag_id = manifest.run.get("dag_id") if isinstance(manifest.run, dict) else None
        if not dag_id or dag_id not in user.readable_dag_ids({str(dag_id)}):
            raise HTTPException(404, "no such bundle")  # not 403: do not confirm that it exists
        return manifest

    def _verify(uri: str, bundle_id: str | None) -> Verification:
        key = _key()
        if key is None:
            raise HTTPException(409, "no trusted public key is configured (XAC_PUBLIC_KEY)")
        return settings.verification.verify(settings.s3_client(), uri, bundle_id, key)

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> Response:
        user = await principal(request)
        rows, flagged = _visible_rows(user)
        key = _key()
        results = {r.uri: settings.verification.get(r.uri, r.bundle_id) for r in rows}
        if request.query_params.get("verify") == "all" and key is not None:
            for r in rows:
                if results[r.uri] is None:
                    results[r.uri] = _verify(r.uri, r.bundle_id)
        key_note = (
            f"Bundles are verified against the configured trusted key(s) "
            f"({', '.join(keyid[:12] for keyid in key.keyids)})."
            if key
            else "No trusted public key is configured (XAC_PUBLIC_KEY): bundles cannot be verified here."
        )
        content = render_page(
            group_by_model(rows),
            results,
            user=user.name,
            has_key=key is not None,
            key_note=key_note,
            flagged=flagged,
        )
        return HTMLResponse(
            content, headers={"Cache-Control": "no-store", "Content-Security-Policy": PAGE_CSP}
        )

    @app.get("/verify")
    async def verify_then_show(request: Request, uri: str) -> Response:
        user = await principal(request)
        manifest = _authorised_bundle(user, uri)
        _verify(uri, manifest.bundle_id)
        return RedirectResponse("./", status_code=303)

    @app.get("/api/bundles")
    async def api_bundles(request: Request) -> Response:
        user = await principal(request)
        rows, flagged = _visible_rows(user)
        out = []
        for r in rows:
            cached = settings.verification.get(r.uri, r.bundle_id)
            out.append({**r.to_dict(), "verification": cached.to_dict() if cached else None})
        return JSONResponse(
            {"user": user.name, "bundles": out, "flagged": flagged}, headers={"Cache-Control": "no-store"}
        )

    @app.post("/api/verify")
    async def api_verify(request: Request, uri: str) -> Response:
        user = await principal(request)
        manifest = _authorised_bundle(user, uri)
        return JSONResponse({"uri": uri, **_verify(uri, manifest.bundle_id).to_dict()})

    @app.get("/bundles/{ref}/download")
    async def download(request: Request, ref: str, format: str = "html") -> Response:
        from include.compliance import presign_bundle

        user = await principal(request)
        uri = uri_from_ref(ref)
        manifest = _authorised_bundle(user, uri)
        expires = settings.presign_expires_seconds
        links = presign_bundle(settings.s3_client(), uri, expires_seconds=expires)
        headers = {"Cache-Control": "no-store"}
        if format == "json":
            return JSONResponse(
                {"uri": uri, "bundle_id": manifest.bundle_id, "expires_seconds": expires, "files": links},
                headers=headers,
            )
        return HTMLResponse(
            render_download(uri, manifest.bundle_id, links, expires),
            headers={**headers, "Content-Security-Policy": PAGE_CSP},
        )

    @app.get("/bundles/{ref}/files/{path:path}")
    async def bundle_file(request: Request, ref: str, path: str) -> Response:
        from include.compliance import parse_s3_uri

        user = await principal(request)
        uri = uri_from_ref(ref)
        manifest = _authorised_bundle(user, uri)
        if path == MANIFEST_NAME:
            data, expected = manifest.raw, None
        else:
            entry = next((e for e in manifest.files if e.path == path), None)
            if entry is None and path != STATEMENT_NAME:
                raise HTTPException(404, f"{path} is not a file of this bundle")
            bucket, prefix = parse_s3_uri(uri)
            try:
                data = settings.s3_client().get_object(Bucket=bucket, Key=f"{prefix}/{path}")["Body"].read()
            except Exception as exc:
                raise HTTPException(404, f"{path}: missing from {uri}") from exc
            expected = entry.sha256 if entry is not None else None
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            # Shown bytes must be the listed (signed) bytes: refuse anything else.
            raise HTTPException(502, f"{path}: content does not match its sha256 in the manifest")
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if media.startswith("text/"):
            media += "; charset=utf-8"
        return Response(
            data,
            media_type=media,
            headers={
                "Content-Security-Policy": BUNDLE_FILE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=300",
            },
        )

    return app
