"""``xac explain``: resolve the inputs of one explainer run and hand them to the runtime.

This is the pod's entrypoint. Inputs arrive by URI (a local Parquet path or ``s3://``) from the
provenance stage; when none is given (a developer running it by hand) the provenance stage runs
first, so the explainer never runs on data that did not pass its expectations.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from include.configuration import LoadedConfig, model_catalogue
from include.digests import sha256_file


class ExplainJobError(RuntimeError):
    """A refused explainer run; ``exit_code`` is the CLI's (1: bad input, 3: cannot run)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _fetch(uri: str, target: Path) -> Path:
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.is_file():
            raise ExplainJobError(f"input {uri} does not exist")
        return path
    from include.compliance import parse_s3_uri
    from include.storage import s3_client

    bucket, key = parse_s3_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    s3_client().download_file(bucket, key, str(target))
    return target


def run_explain_job(
    loaded: LoadedConfig,
    *,
    out_dir: Path,
    inference_uri: str | None = None,
    background_uri: str | None = None,
    model_version: str | None = None,
    inference_ids: list[str] | None = None,
    sample_budget: int | None = None,
    seed: int | None = None,
    shard: tuple[int, int] = (0, 1),
    expected_sha256: dict[str, str] | None = None,
) -> dict[str, Any]:
    from include.explainers.errors import ExplainError, ModelLoadError, ModelNotFoundError
    from include.explainers.runtime import ExplainRequest, run_explain
    from include.orchestration.pipeline import explainer_params, run_provenance_for_config

    spec = loaded.config.spec
    settings = spec.explainerConfig
    assert settings is not None  # the policy gate guarantees an explainer
    version = model_version or spec.modelVersion or str(model_catalogue()[spec.modelName]["defaultVersion"])
    inputs = out_dir.parent / f".{out_dir.name}.inputs"
    if (inference_uri is None) != (background_uri is None):
        raise ExplainJobError("give both --inference and --background, or neither")
    if inference_uri is None:
        result = run_provenance_for_config(loaded, out_dir=inputs, inference_ids=inference_ids)
        if not result.passed:
            raise ExplainJobError("data validation failed, nothing explained:\n" + result.summary)
        inference_path, background_path = Path(result.inference_path), Path(result.background_path)
    else:
        assert background_uri is not None
        inference_path = _fetch(inference_uri, inputs / "inference.parquet")
        background_path = _fetch(background_uri, inputs / "background.parquet")
        # The explainer must consume exactly the frames the provenance stage validated.
        for name, path in (("inference", inference_path), ("background", background_path)):
            want = (expected_sha256 or {}).get(name)
            got = sha256_file(path) if want else None
            if want and got != want:
                raise ExplainJobError(
                    f"{name} frame {path} has sha256 {got}, but provenance validated {want}: "
                    "refusing to explain data that was not validated"
                )
    request = ExplainRequest(
        model_name=spec.modelName,
        model_version=version,
        method=settings.method,
        params=explainer_params(loaded, sample_budget),
        seed=settings.seed if seed is None else seed,
        inference_path=inference_path,
        background_path=background_path,
        out_dir=out_dir,
        output_format=spec.outputFormat,
        shard_index=shard[0],
        shard_count=shard[1],
    )
    try:
        return run_explain(request)
    except (ModelNotFoundError, ModelLoadError) as exc:
        raise ExplainJobError(str(exc), exit_code=3) from None
    except ExplainError as exc:
        raise ExplainJobError(str(exc), exit_code=1) from None
    finally:
        if inputs.exists() and inference_uri is not None and inference_uri.startswith("s3://"):
            shutil.rmtree(inputs, ignore_errors=True)
