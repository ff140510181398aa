"""Airflow plugin: the compliance bundle page (``/xac-compliance/``), linked from the UI's nav.

The page itself is :mod:`include.compliance_ui` (plain FastAPI). This file adds what needs Airflow:

* **Authentication.** Airflow does not protect plugin endpoints, so every request is checked here the
  way the api-server checks its own: an ``Authorization: Bearer`` JWT wins, else the UI's ``_token``
  cookie; the token is validated by the configured auth manager (``get_user_from_token``: signature with
  ``[api_auth] jwt_secret`` / the JWKS, expiry, audience, revocation). No or an expired token is a 401
  (a browser is redirected to the auth manager's login page); an invalid one is a 403.
* **Authorisation.** A bundle is listed only when the user may read its DAG's runs
  (``is_authorized_dag(GET, RUN)``), so the auth manager's DAG permissions apply to bundles too.
* **S3 and the trusted keys**, from the same adapters as the DAGs (:mod:`include.adapters.connections`):
  ``S3_ENDPOINT_URL`` when set, else the ``aws_default`` connection when it exists, else boto3's defaults;
  the ``xac_keyring`` connection's PEM public keys, else ``XAC_PUBLIC_KEY`` (else the embedded default's
  demo key).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from fastapi import Request

from include.adapters import connections
from include.compliance_ui import Forbidden, NotAuthenticated, Principal, Settings, create_app

URL_PREFIX = "/xac-compliance"


async def _authenticate(request: Request) -> Principal:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from jwt import ExpiredSignatureError, InvalidTokenError

    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    # As airflow.api_fastapi.core_api.security.get_user: an explicit bearer token wins over the cookie.
    token = credentials.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise NotAuthenticated("Not authenticated")
    auth_manager = get_auth_manager()
    try:
        user = await auth_manager.get_user_from_token(token)
    except ExpiredSignatureError:
        raise NotAuthenticated("Token Expired") from None
    except InvalidTokenError:
        raise Forbidden("Invalid JWT token") from None
    return Principal(
        name=str(user.get_name()), readable_dag_ids=lambda ids: _readable(auth_manager, user, ids)
    )


def _readable(auth_manager: Any, user: Any, dag_ids: set[str]) -> set[str]:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return {
        dag_id
        for dag_id in dag_ids
        if auth_manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        )
    }


def _login_url(next_url: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    return str(get_auth_manager().get_url_login(next_url=next_url))


compliance_app = create_app(
    Settings(
        authenticate=_authenticate,
        s3_client=connections.s3_client,
        trusted_keys=connections.trusted_keys,
        login_url=_login_url,
    )
)


class XacCompliancePlugin(AirflowPlugin):
    name = "xac_compliance"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {
            "app": compliance_app,
            "url_prefix": URL_PREFIX,
            "name": "XAC compliance bundles",
        }
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Compliance",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "xac-compliance",
        }
    ]
