"""``xac explain``: resolve the inputs of one explainer run and hand them to the runtime.

This is the pod's entrypoint. Inputs arrive by URI (a local Parquet path or ``s3://``) from the
provenance stage; when none is given (a developer running it by hand) the provenance stage runs
first, so the explainer never runs on data that did not pass its expectations.

A pod shares no file system with the Airflow worker, so everything can travel through object
storage: the config (``--config s3://...`` with ``--config-sha256``), the model
(``--model-uri s3://.../`` holding ``model.pt`` + ``model.json``, checked against ``--model-sha256``;
for a catalogue model declared by its ``source``, the staged copy of its artifact, pinned the same way)
and the outputs (``--out s3://bucket/prefix/``: computed in a local folder, then uploaded with
``run_summary.json`` last, after clearing what an earlier try of the same shard left there, so a
retried shard never leaves duplicate or stale objects and the marker means "complete").
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


def is_s3_uri(value: str | Path) -> bool:
    return str(value).startswith("s3://")


def fetch_config(uri: str, expected_sha256: str | None = None) -> Path:
    """A config given by ``s3://`` URI, downloaded to a temporary file (its digest checked)."""
    import tempfile

    if not is_s3_uri(uri):
        path = Path(uri)
    else:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="xac-config-"))
        atexit.register(shutil.rmtree, folder, True)  # the process's own copy: gone when it ends
        path = _fetch(uri, folder / Path(uri).name)
    if expected_sha256 and path.is_file() and sha256_file(path) != expected_sha256:
        raise ExplainJobError(f"config {uri} has sha256 {sha256_file(path)}, expected {expected_sha256}")
    return path


def fetch_model(uri: str, name: str, version: str, expected_sha256: str | None) -> Path:
    """Download ``model.pt`` and ``model.json`` from ``uri`` into this process's model store."""
    from include.explainers.model_store import model_dir

    target = model_dir(name, version)
    base = uri.rstrip("/")
    for file_name in ("model.json", "model.pt"):
        try:
            _fetch(f"{base}/{file_name}", target / file_name)
        except ExplainJobError:
            raise
        except Exception as exc:  # botocore's errors: missing object, no credentials, unreachable
            raise ExplainJobError(
                f"cannot fetch the model from {base}/{file_name}: {exc}", exit_code=3
            ) from None
    if expected_sha256 and sha256_file(target / "model.pt") != expected_sha256:
        raise ExplainJobError(
            f"model {name!r} version {version!r} from {base} has sha256 {sha256_file(target / 'model.pt')}, "
            f"expected {expected_sha256}",
            exit_code=3,
        )
    return target


def upload_outputs(local: Path, uri: str, s3_client: Any = None) -> int:
    """Replace everything under the ``s3://`` prefix ``uri`` with the files of ``local``.

    ``run_summary.json`` goes last: its presence marks a complete shard. Returns the file count.
    """
    from include.compliance import parse_s3_uri
    from include.storage import s3_client as make_client

    client = s3_client or make_client()
    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    stale = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    # the marker first, so a half-replaced prefix never looks complete
    for item in sorted(stale, key=lambda o: not o["Key"].endswith("/run_summary.json")):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    files = sorted(
        (p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: (p.name == "run_summary.json", str(p)),
    )
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.relative_to(local).as_posix())
    return len(files)


def inference_service_location(loaded: LoadedConfig) -> str | None:
    """The V2 URL of the config's ``integration.inferenceServiceRef`` when its model is an endpoint
    the catalogue declares without a URI (KServe); None otherwise."""
    from include.explainers.catalogue import catalogue_entries
    from include.explainers.sources.oip import inference_service_url

    spec = loaded.config.spec
    source = catalogue_entries()[spec.modelName].source
    ref = spec.integration.inferenceServiceRef if spec.integration else None
    if source is None or not source.from_inference_service or ref is None:
        return None
    return inference_service_url(ref.name, ref.namespace or loaded.config.metadata.namespace or "default")


def run_explain_job(
    loaded: LoadedConfig,
    *,
    out_dir: Path | str,
    inference_uri: str | None = None,
    background_uri: str | None = None,
    model_version: str | None = None,
    inference_ids: list[str] | None = None,
    sample_budget: int | None = None,
    seed: int | None = None,
    shard: tuple[int, int] = (0, 1),
    expected_sha256: dict[str, str] | None = None,
    model_uri: str | None = None,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Explain one shard; ``out_dir`` is a folder or an ``s3://`` prefix (see the module docstring)."""
    if is_s3_uri(out_dir):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="xac-explain-") as tmp:
            local = Path(tmp) / "out"
            summary = run_explain_job(
                loaded,
                out_dir=local,
                inference_uri=inference_uri,
                background_uri=background_uri,
                model_version=model_version,
                inference_ids=inference_ids,
                sample_budget=sample_budget,
                seed=seed,
                shard=shard,
                expected_sha256=expected_sha256,
                model_uri=model_uri,
                model_sha256=model_sha256,
            )
            try:
                count = upload_outputs(local, str(out_dir))
            except Exception as exc:
                raise ExplainJobError(f"cannot write the outputs to {out_dir}: {exc}", exit_code=3) from None
            print(f"xac explain: {count} files written to {out_dir}", flush=True)
            return summary
    out_dir = Path(out_dir)
    from include.explainers.errors import ExplainError, ModelLoadError, ModelNotFoundError
    from include.explainers.runtime import ExplainRequest, run_explain
    from include.orchestration.pipeline import explainer_params, run_provenance_for_config

    spec = loaded.config.spec
    settings = spec.explainerConfig
    assert settings is not None  # the policy gate guarantees an explainer
    version = model_version or spec.modelVersion or str(model_catalogue()[spec.modelName]["defaultVersion"])
    from include.explainers.model_store import is_source_model

    source_model = is_source_model(spec.modelName)
    if model_uri and not source_model:
        fetch_model(model_uri, spec.modelName, version, model_sha256)
    if source_model and model_uri is None:
        model_uri = inference_service_location(loaded)
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
        try:
            inference_path = _fetch(inference_uri, inputs / "inference.parquet")
            background_path = _fetch(background_uri, inputs / "background.parquet")
        except ExplainJobError:
            raise
        except Exception as exc:  # no credentials, unreachable endpoint, missing object
            raise ExplainJobError(f"cannot fetch the input frames: {exc}", exit_code=3) from None
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
        # a user's model: the pod reads the copy the run staged (its sha256 pinned), not the worker's path
        model_location=model_uri if source_model else None,
        model_sha256=model_sha256 if source_model and model_uri else None,
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
