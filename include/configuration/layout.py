"""Where a run's outputs go in the bucket, derived from the config's ``storage.path`` template.

The template names one explanation, e.g. ``diagnosis-risk/kernelshap/{model_version}/{inference_id}.json``.
A run's compliance bundle lives in the template's folder, under ``runs/<run key>/``, and holds each
explanation at ``explanations/<file name of the template>``:

    s3://<bucket>/diagnosis-risk/kernelshap/1/runs/<run key>/explanations/P100001.json
                                              runs/<run key>/manifest.json ...

so every run writes to its own prefix (bundles are write-once) and a model's bundles are listed
under the template's static prefix (the part before the first placeholder).
"""

from __future__ import annotations

import re

from include.configuration.schema import ExplainerConfiguration

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key_part(value: str) -> str:
    """Make a value (run id, inference id) usable as one S3 key segment and file name."""
    cleaned = _UNSAFE.sub("_", value).strip("._")
    return cleaned or "_"


def placeholder_values(config: ExplainerConfiguration, model_version: str) -> dict[str, str]:
    return {
        "model_name": config.spec.modelName,
        "model_version": model_version,
        "config_name": config.metadata.name,
        "namespace": config.metadata.namespace or "default",
    }


def bundle_prefix(config: ExplainerConfiguration, model_version: str, run_key: str) -> str:
    """Key prefix (no leading slash, trailing slash) of one run's bundle."""
    directory = config.spec.storage.path.rpartition("/")[0]
    rendered = directory.format(**placeholder_values(config, model_version)) if directory else ""
    parts = [p for p in rendered.split("/") if p]
    return "/".join([*parts, "runs", safe_key_part(run_key)]) + "/"


def explanation_file_name(config: ExplainerConfiguration, model_version: str, inference_id: str) -> str:
    """File name of one explanation inside the bundle's ``explanations/`` folder."""
    file_template = config.spec.storage.path.rpartition("/")[2]
    values = placeholder_values(config, model_version) | {"inference_id": safe_key_part(inference_id)}
    return file_template.format(**values)


def model_listing_prefix(config: ExplainerConfiguration) -> str:
    """The template's static prefix: every bundle of this config lives below it."""
    template = config.spec.storage.path
    static = template.split("{", 1)[0]
    return static.rpartition("/")[0] + "/" if "/" in static else ""
