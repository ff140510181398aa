"""A black-box model behind the Open Inference Protocol (KServe V2 REST): ``oip:URL``.

URL is the model's V2 address, ``http(s)://HOST[:PORT]/v2/models/NAME[/versions/VERSION]``
(KServe, MLServer, Triton, Seldon). Before any work the model's metadata (``GET URL``) is read and,
where the server declares its inputs (some leave them empty unless configured), checked against the
feature columns: one ``[-1, F]`` input of the columns in order, or one input per column by name.
A server that cannot be reached, or whose model is not ready, is a clear error naming the URL.

The explanation methods evaluate thousands of perturbed rows per pass; each pass becomes a few
``POST URL/infer`` requests of up to ``XAC_OIP_BATCH_ROWS`` rows (default 16,384), sent
concurrently but never more than ``XAC_OIP_CONCURRENCY`` (default 4) at a time per endpoint,
whatever the number of pass workers. Requests time out (connect 5 s, read ``XAC_OIP_TIMEOUT``,
default 60 s) and are retried with exponential backoff on connection errors, dropped
connections, 429 and 5xx (honouring ``Retry-After`` up to 30 s), ``XAC_OIP_RETRIES`` times
(default 4), by urllib3's ``Retry``; after that the run fails naming the endpoint and the last
answer, and nothing is written. Responses are bounded in size and checked (shape, row count,
finite numbers) before use.

The output read is the one named by ``--endpoint-output`` / ``source.output``, else a declared
output whose name says probabilities (``predict_proba``), else the server's default; MLServer's
scikit-learn runtime returns ``predict`` unless asked, so ask for ``predict_proba``. What the
bundle records for an endpoint is its URL, the model name, version and platform it reported, and
the sha256 of its metadata document: there are no artifact bytes to pin on the client's side.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from include.explainers.errors import InputValidationError, ModelLoadError, ModelNotFoundError
from include.explainers.sources import (
    ArtifactDigest,
    LoadOptions,
    ModelOrigin,
    ModelSource,
    OutputSpec,
    SourceModel,
)

_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$")
_DATATYPES = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16}
METADATA_MAX_BYTES = 1 << 20


class EndpointError(RuntimeError):
    """The inference server failed (after retries) or answered something unusable."""


def _env_int(name: str, default: int, least: int = 1) -> int:
    raw = os.environ.get(name)
    return max(int(raw), least) if raw else default


@dataclass(frozen=True)
class EndpointSettings:
    batch_rows: int
    concurrency: int
    timeout_seconds: float
    retries: int

    @classmethod
    def from_env(cls) -> EndpointSettings:
        return cls(
            batch_rows=_env_int("XAC_OIP_BATCH_ROWS", 16384),
            concurrency=_env_int("XAC_OIP_CONCURRENCY", 4),
            timeout_seconds=float(os.environ.get("XAC_OIP_TIMEOUT", "60")),
            retries=_env_int("XAC_OIP_RETRIES", 4, least=0),
        )


def parse_endpoint(url: str) -> tuple[str, str, str | None]:
    """(model URL without a trailing slash, model name, version or None); refuses anything else."""
    parts = urlsplit(url)
    match = _PATH.match(parts.path)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or not match
        or parts.query
        or parts.fragment
    ):
        raise ModelLoadError(
            f"oip:{url}: expected the model's V2 URL, http(s)://HOST[:PORT]/v2/models/NAME[/versions/VERSION]"
        )
    return url.rstrip("/"), match.group("name"), match.group("version")


# How a KServe InferenceService is reached from inside the cluster; XAC_KSERVE_URL_TEMPLATE
# overrides it (e.g. an ingress: https://{name}-{namespace}.models.example.com/v2/models/{name}).
KSERVE_URL_TEMPLATE = "http://{name}.{namespace}.svc.cluster.local/v2/models/{name}"


def inference_service_url(name: str, namespace: str) -> str:
    """The V2 URL of KServe InferenceService ``name`` in ``namespace`` (the seed's inferenceServiceRef)."""
    template = os.environ.get("XAC_KSERVE_URL_TEMPLATE") or KSERVE_URL_TEMPLATE
    url = template.replace("{name}", name).replace("{namespace}", namespace)
    parse_endpoint(url)  # a template that makes no V2 URL is refused here
    return url


def _headers(options: LoadOptions) -> dict[str, str]:
    """``NAME: VALUE`` headers; a VALUE ``env:VAR`` is read from the environment (keeps tokens off argv)."""
    out = {"Content-Type": "application/json"}
    for raw in options.headers:
        name, sep, value = raw.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ModelLoadError(f"header {raw.split(':', 1)[0]!r}: expected NAME: VALUE")
        if value.startswith("env:"):
            var = value[4:]
            if var not in os.environ:
                raise ModelLoadError(f"header {name}: environment variable {var} is not set")
            value = os.environ[var]
        out[name] = value
    return out


class EndpointClient:
    """Batched, bounded, retried V2 inference against one model URL."""

    def __init__(self, url: str, headers: dict[str, str], settings: EndpointSettings) -> None:
        import urllib3
        from urllib3.util import Retry, Timeout

        self.url = url
        self.headers = headers
        self.settings = settings
        retry = Retry(
            total=settings.retries,
            connect=settings.retries,
            read=settings.retries,
            status=settings.retries,
            other=settings.retries,
            allowed_methods=None,  # inference is idempotent: POSTs are retried too
            status_forcelist=(429, 500, 502, 503, 504),
            backoff_factor=0.2,
            backoff_max=10.0,
            retry_after_max=30,
            raise_on_status=False,  # the last answer is reported with its body
        )
        self.pool = urllib3.PoolManager(
            maxsize=settings.concurrency,
            retries=retry,
            timeout=Timeout(connect=5.0, read=settings.timeout_seconds),
        )
        self.gate = threading.BoundedSemaphore(settings.concurrency)
        self.requests_sent = 0
        self.rows_sent = 0
        self.output_names: set[str] = set()  # the names of the outputs read

    def _call(self, method: str, url: str, body: bytes | None, limit: int) -> Any:
        import urllib3

        try:
            with self.gate:
                response = self.pool.request(
                    method, url, body=body, headers=self.headers, preload_content=False
                )
                try:
                    declared = int(response.headers.get("Content-Length") or 0)
                    if declared > limit:
                        raise EndpointError(
                            f"{method} {url}: answer of {declared} bytes, over the {limit}-byte limit"
                        )
                    data = response.read(limit + 1, decode_content=True)
                finally:
                    response.release_conn()
        except urllib3.exceptions.HTTPError as exc:  # retries exhausted: refused, timed out, dropped
            raise EndpointError(
                f"{method} {url} failed after {self.settings.retries} retries: {exc}"
            ) from None
        if len(data) > limit:
            raise EndpointError(f"{method} {url}: answer over the {limit}-byte limit")
        if response.status != 200:
            text = data[:300].decode("utf-8", "replace")
            raise EndpointError(f"{method} {url} answered HTTP {response.status} (after retries): {text}")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise EndpointError(f"{method} {url}: the answer is not JSON: {data[:200]!r}") from None

    def metadata(self) -> dict[str, Any]:
        doc = self._call("GET", self.url, None, METADATA_MAX_BYTES)
        if not isinstance(doc, dict):
            raise EndpointError(f"GET {self.url}: model metadata is not a JSON object")
        return doc

    def infer(
        self,
        rows: np.ndarray,
        input_name: str,
        datatype: str,
        output: str | None,
        per_column: list[str] | None,
    ) -> np.ndarray:
        """Outputs for ``rows`` (N, F): N/batch_rows requests, at most ``concurrency`` at a time."""
        n = rows.shape[0]
        starts = list(range(0, n, self.settings.batch_rows))

        def one(start: int) -> np.ndarray:
            block = rows[start : start + self.settings.batch_rows]
            return self._infer_block(block, input_name, datatype, output, per_column)

        if len(starts) == 1:
            return one(0)
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(starts))) as pool:
            return np.concatenate(list(pool.map(one, starts)))

    def _infer_block(
        self,
        block: np.ndarray,
        input_name: str,
        datatype: str,
        output: str | None,
        per_column: list[str] | None,
    ) -> np.ndarray:
        m = block.shape[0]
        cast = np.ascontiguousarray(block.astype(_DATATYPES[datatype], copy=False))
        if per_column is None:
            inputs = [
                {"name": input_name, "shape": [m, block.shape[1]], "datatype": datatype, "data": cast.ravel()}
            ]
        else:
            inputs = [
                {
                    "name": column,
                    "shape": [m, 1],
                    "datatype": datatype,
                    "data": np.ascontiguousarray(cast[:, k]),
                }
                for k, column in enumerate(per_column)
            ]
        payload: dict[str, Any] = {"inputs": inputs}
        if output is not None:
            payload["outputs"] = [{"name": output}]
        # orjson writes numpy arrays directly, each float in its shortest exact form: 20x faster
        # than json.dumps(array.tolist()), which was most of a pass's time on a cheap model.
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        limit = max(1 << 20, m * 4096)  # up to ~150 classes of full-precision numbers per row
        doc = self._call("POST", f"{self.url}/infer", body, limit)
        self.requests_sent += 1
        self.rows_sent += m
        outputs = doc.get("outputs") if isinstance(doc, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise EndpointError(f"POST {self.url}/infer: the answer has no outputs")
        chosen = next((o for o in outputs if isinstance(o, dict) and o.get("name") == output), None)
        if chosen is None:
            if output is not None:
                names = [o.get("name") for o in outputs if isinstance(o, dict)]
                raise EndpointError(
                    f"POST {self.url}/infer: no output {output!r} in the answer (got {names})"
                )
            chosen = outputs[0]
        self.output_names.add(str(chosen.get("name")))
        try:
            values = np.asarray(chosen["data"], dtype=np.float64)
            shape = [int(s) for s in chosen["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise EndpointError(
                f"POST {self.url}/infer: unusable output {chosen.get('name')!r}: {exc}"
            ) from None
        if not shape or shape[0] != m or int(np.prod(shape)) != values.size:
            raise EndpointError(
                f"POST {self.url}/infer: output shape {shape} for {m} rows ({values.size} values)"
            )
        if not np.all(np.isfinite(values)):
            raise EndpointError(f"POST {self.url}/infer: the output holds NaN or infinite values")
        return values.reshape(m, -1)


def _declared(metadata: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = metadata.get(key) or []
    return (
        [i for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
        if isinstance(items, list)
        else []
    )


def load_endpoint(location: str, options: LoadOptions) -> SourceModel:
    from include.explainers.sources.blackbox import BlackBoxModule

    url, name, version = parse_endpoint(location)
    settings = EndpointSettings.from_env()
    client = EndpointClient(url, _headers(options), settings)
    try:
        metadata = client.metadata()
    except EndpointError as exc:
        raise ModelNotFoundError(f"inference endpoint {url} is not usable: {exc}") from None
    inputs, outputs = _declared(metadata, "inputs"), _declared(metadata, "outputs")
    datatype, input_name, per_column, input_names, n_inputs = "FP64", "input-0", None, None, None
    if len(inputs) == 1:
        input_name = inputs[0]["name"]
        datatype = str(inputs[0].get("datatype", "FP64")).upper()
        shape = inputs[0].get("shape") or []
        if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            n_inputs = shape[1]
    elif len(inputs) > 1:
        per_column = [i["name"] for i in inputs]
        input_names = tuple(per_column)
        datatype = str(inputs[0].get("datatype", "FP64")).upper()
    if datatype not in _DATATYPES:
        raise InputValidationError(
            f"{url}: input datatype {datatype} is not a float type ({', '.join(_DATATYPES)})"
        )
    output = options.endpoint_output
    if output is None:
        probability = [o["name"] for o in outputs if "prob" in o["name"].lower()]
        output = probability[0] if probability else None
    elif outputs and output not in [o["name"] for o in outputs]:
        raise InputValidationError(
            f"{url}: no output {output!r}; the model declares {', '.join(o['name'] for o in outputs)}"
        )
    spec = OutputSpec("binary", "probabilities") if output and "prob" in output.lower() else None

    def predict(rows: np.ndarray) -> np.ndarray:
        return client.infer(rows, input_name, datatype, output, per_column)

    def infer_output(n_features: int) -> OutputSpec | None:
        """One zero row: an output named like probabilities is read as such, otherwise width decides."""
        width = predict(np.zeros((1, n_features))).shape[1]
        if any("prob" in name.lower() for name in client.output_names):
            return OutputSpec("binary" if width <= 2 else "multiclass", "probabilities")
        return None

    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    reported = metadata.get("versions")
    served_version = version or (
        str(reported[0]) if isinstance(reported, list) and len(reported) == 1 else None
    )
    module = BlackBoxModule(predict, np.float64, f"V2 endpoint {url}")
    module.client = client  # type: ignore[assignment]  # the bench reads its request counters
    return SourceModel(
        module=module,
        differentiable=False,
        origin=ModelOrigin(
            "oip",
            url,
            (ArtifactDigest("metadata.json", hashlib.sha256(canonical).hexdigest(), len(canonical)),),
            options.version or served_version,
            "Open Inference Protocol V2 (REST)",
            {
                "model": str(metadata.get("name", name)),
                "platform": str(metadata.get("platform", "")),
                "output": output or "(server default)",
            },
        ),
        output=spec,
        input_names=input_names,
        n_inputs=n_inputs,
        infer_output=infer_output if spec is None else None,
    )


SOURCES = {
    "oip": ModelSource(
        "oip",
        "A model behind an Open Inference Protocol (KServe V2 REST) endpoint: the perturbation methods, "
        "in batched requests.",
        "V2 REST endpoint",
        False,
        load_endpoint,
    ),
}
