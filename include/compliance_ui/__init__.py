"""The compliance page of the Airflow UI, as a plain FastAPI app (the plugin only adds Airflow's login).

See :mod:`include.compliance_ui.app` for the routes and :mod:`include.compliance_ui.catalog` for what
they show. No Airflow import here: the plugin supplies authentication and authorisation.
"""

from include.compliance_ui.app import (
    Forbidden,
    NotAuthenticated,
    Principal,
    Settings,
    bundle_ref,
    create_app,
    uri_from_ref,
)
from include.compliance_ui.catalog import (
    BundleRow,
    Verification,
    VerificationCache,
    bundle_locations,
    collect_bundles,
    group_by_model,
)

__all__ = [
    "BundleRow",
    "Forbidden",
    "NotAuthenticated",
    "Principal",
    "Settings",
    "Verification",
    "VerificationCache",
    "bundle_locations",
    "bundle_ref",
    "collect_bundles",
    "create_app",
    "group_by_model",
    "uri_from_ref",
]
