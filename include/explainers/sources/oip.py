"""A black-box model behind the Open Inference Protocol (KServe V2, REST or gRPC): ``oip:URL``.

URL is the model's V2 address, ``http(s)://HOST[:PORT]/v2/models/NAME[/versions/VERSION]``
(KServe, MLServer, Triton, Seldon), or the same path under ``grpc://`` / ``grpcs://`` (TLS) for the
protocol's gRPC service (``inference.GRPCInferenceService``, the ``open-inference-grpc`` client).
Over gRPC the rows travel as little-endian ``raw_input_contents`` and the outputs are read from
``raw_output_contents`` (or the typed contents): no number is printed and parsed, which is most of
a REST request's cost on a cheap model (bench/bench_model_sources.py).

Before any work the model's metadata (``GET URL``, gRPC ``ModelMetadata``) is read and,
where the server declares its inputs (some leave them empty unless configured), checked against the
feature columns: one ``[-1, F]`` input of the columns in order, or one input per column by name.
A server that cannot be reached, or whose model is not ready, is a clear error naming the URL.

The explanation methods evaluate thousands of perturbed rows per pass; each pass becomes a few
``POST URL/infer`` requests of up to ``XAC_OIP_BATCH_ROWS`` rows (default 16,384), sent
concurrently but never more than ``XAC_OIP_CONCURRENCY`` (default 4) at a time per endpoint,
whatever the number of pass workers. Requests time out (connect 5 s, read ``XAC_OIP_TIMEOUT``,
default 60 s) and are retried with exponential backoff on connection errors, dropped
connections, 429 and 5xx (honouring ``Retry-After`` up to 30 s), ``XAC_OIP_RETRIES`` times
(default 4), by urllib3's ``Retry``; over gRPC, on UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL and
DEADLINE_EXCEEDED (each try with its own deadline). After that the run fails naming the endpoint
and the last answer, and nothing is written. Responses are bounded in size and checked (shape, row count,
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
import time
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


REST_SCHEMES = ("http", "https")
GRPC_SCHEMES = ("grpc", "grpcs")


def parse_endpoint(url: str) -> tuple[str, str, str | None]:
    """(model URL without a trailing slash, model name, version or None); refuses anything else."""
    parts = urlsplit(url)
    match = _PATH.match(parts.path)
    if (
        parts.scheme not in REST_SCHEMES + GRPC_SCHEMES
        or not parts.netloc
        or not match
        or parts.query
        or parts.fragment
    ):
        raise ModelLoadError(
            f"oip:{url}: expected the model's V2 URL, "
            "http(s)://HOST[:PORT]/v2/models/NAME[/versions/VERSION] "
            "(REST) or grpc(s)://HOST:PORT/v2/models/NAME[/versions/VERSION] (gRPC)"
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
    out: dict[str, str] = {}
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


@dataclass(frozen=True)
class InferTarget:
    """What every request names: one ``[N, F]`` input (or one ``[N, 1]`` input per column, by
    name), their datatype, and the output to read (None: the server's default)."""

    input_name: str
    datatype: str
    output: str | None
    per_column: tuple[str, ...] | None


def connection_variable(conn_id: str) -> str:
    """Airflow's environment variable for connection ``conn_id`` (how a shard process or a pod gets it)."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


@dataclass(frozen=True)
class EndpointConnection:
    """What an Airflow connection says about an endpoint: its URL (when it names one) and headers."""

    conn_id: str
    url: str | None
    headers: dict[str, str]


def endpoint_connection(conn_id: str, model_name: str) -> EndpointConnection:
    """Read Airflow connection ``conn_id`` from ``AIRFLOW_CONN_<ID>`` (Airflow's JSON form).

    The explain task resolves the connection through Airflow (metadata DB, environment or secrets
    backend) and hands it to its shard process in that variable; a pod gets it from a Kubernetes
    Secret (the cluster profile's ``envFromSecrets``). Fields, as Airflow's HTTP connection uses
    them: ``host`` (a full URL, or a host name with ``port`` and the scheme, http/https/grpc/grpcs,
    in ``schema`` or ``conn_type``;
    ``/v2/models/<extra.model or the catalogue model>`` is added when the host has no V2 path),
    ``login`` + ``password`` (Basic auth), ``password`` alone (a Bearer token), ``extra.headers``.
    """
    import base64

    var = connection_variable(conn_id)
    raw = os.environ.get(var)
    where = f"Airflow connection {conn_id!r}"
    if raw is None:
        raise ModelLoadError(
            f"{where} is not available to this process: the explain task passes it as ${var}; in a pod, "
            f"map a Kubernetes Secret holding its JSON form to {var} (cluster profile spec.envFromSecrets)"
        )
    if len(raw) > METADATA_MAX_BYTES:
        raise ModelLoadError(f"{where}: ${var} is over {METADATA_MAX_BYTES} bytes")
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise ModelLoadError(f'{where}: ${var} is not Airflow\'s JSON connection form ({{"conn_type": ...}})')
    extra = fields.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError:
            raise ModelLoadError(f"{where}: extra is not JSON") from None
    if not isinstance(extra, dict):
        raise ModelLoadError(f"{where}: extra must be a JSON object")
    headers: dict[str, str] = {}
    login, password = fields.get("login"), fields.get("password")
    if password and login:
        token = base64.b64encode(f"{login}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif password:
        headers["Authorization"] = f"Bearer {password}"
    declared = extra.get("headers") or {}
    if not isinstance(declared, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in declared.items()
    ):
        raise ModelLoadError(f"{where}: extra.headers must map header names to strings")
    headers.update(declared)
    url = None
    host = str(fields.get("host") or "").strip()
    if host:
        if "://" in host:
            url = host.rstrip("/")
        else:
            # Airflow's HTTP connection keeps the scheme in ``schema``; its URI form, in conn_type
            named = [str(fields.get(k) or "").lower() for k in ("schema", "conn_type")]
            scheme = next((n for n in named if n in REST_SCHEMES + GRPC_SCHEMES), "http")
            port = fields.get("port")
            url = f"{scheme}://{host}" + (f":{int(port)}" if port else "")
        if "/v2/models/" not in url:
            url += f"/v2/models/{extra.get('model') or model_name}"
        try:
            parse_endpoint(url)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{where}: host makes no V2 URL: {exc}") from None
    return EndpointConnection(conn_id, url, headers)


class _BatchedClient:
    """What both transports share: batching, the concurrency cap and the checks of every answer."""

    protocol = ""

    def __init__(self, url: str, settings: EndpointSettings) -> None:
        self.url = url
        self.settings = settings
        self.gate = threading.BoundedSemaphore(settings.concurrency)
        self.requests_sent = 0
        self.rows_sent = 0
        self.output_names: set[str] = set()  # the names of the outputs read

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def _send_block(
        self,
        block: np.ndarray,
        target: InferTarget,
    ) -> list[tuple[str, np.ndarray, list[int]]]:
        """One request: the answer's outputs as (name, flat values, shape)."""
        raise NotImplementedError

    def rows_per_request(self, n_features: int, itemsize: int) -> int:
        return self.settings.batch_rows

    def infer(
        self,
        rows: np.ndarray,
        target: InferTarget,
    ) -> np.ndarray:
        """Outputs for ``rows`` (N, F): N/batch_rows requests, at most ``concurrency`` at a time."""
        n = rows.shape[0]
        step = self.rows_per_request(
            rows.shape[1] if rows.ndim == 2 else 1, np.dtype(_DATATYPES[target.datatype]).itemsize
        )
        starts = list(range(0, n, step))

        def one(start: int) -> np.ndarray:
            block = rows[start : start + step]
            return self._infer_block(block, target)

        if len(starts) == 1:
            return one(0)
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(starts))) as pool:
            return np.concatenate(list(pool.map(one, starts)))

    def _infer_block(
        self,
        block: np.ndarray,
        target: InferTarget,
    ) -> np.ndarray:
        m = block.shape[0]
        cast = np.ascontiguousarray(block.astype(_DATATYPES[target.datatype], copy=False))
        output = target.output
        with self.gate:
            outputs = self._send_block(cast, target)
        self.requests_sent += 1
        self.rows_sent += m
        where = f"{self.url} (infer)"
        if not outputs:
            raise EndpointError(f"{where}: the answer has no outputs")
        chosen = next((o for o in outputs if o[0] == output), None)
        if chosen is None:
            if output is not None:
                raise EndpointError(
                    f"{where}: no output {output!r} in the answer (got {[o[0] for o in outputs]})"
                )
            chosen = outputs[0]
        name, values, shape = chosen
        self.output_names.add(name)
        if not shape or shape[0] != m or int(np.prod(shape)) != values.size:
            raise EndpointError(f"{where}: output shape {shape} for {m} rows ({values.size} values)")
        if not np.all(np.isfinite(values)):
            raise EndpointError(f"{where}: the output holds NaN or infinite values")
        return values.reshape(m, -1)


class EndpointClient(_BatchedClient):
    """Batched, bounded, retried V2 inference against one model URL, over REST (JSON)."""

    protocol = "Open Inference Protocol V2 (REST)"

    def __init__(self, url: str, headers: dict[str, str], settings: EndpointSettings) -> None:
        import urllib3
        from urllib3.util import Retry, Timeout

        super().__init__(url, settings)
        self.headers = {"Content-Type": "application/json", **headers}
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

    def _call(self, method: str, url: str, body: bytes | None, limit: int) -> Any:
        import urllib3

        try:
            response = self.pool.request(method, url, body=body, headers=self.headers, preload_content=False)
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

    def _send_block(
        self,
        cast: np.ndarray,
        target: InferTarget,
    ) -> list[tuple[str, np.ndarray, list[int]]]:
        m, datatype, output = cast.shape[0], target.datatype, target.output
        if target.per_column is None:
            inputs = [
                {
                    "name": target.input_name,
                    "shape": [m, cast.shape[1]],
                    "datatype": datatype,
                    "data": cast.ravel(),
                }
            ]
        else:
            inputs = [
                {
                    "name": column,
                    "shape": [m, 1],
                    "datatype": datatype,
                    "data": np.ascontiguousarray(cast[:, k]),
                }
                for k, column in enumerate(target.per_column)
            ]
        payload: dict[str, Any] = {"inputs": inputs}
        if output is not None:
            payload["outputs"] = [{"name": output}]
        # orjson writes numpy arrays directly, each float in its shortest exact form: 20x faster
        # than json.dumps(array.tolist()), which was most of a pass's time on a cheap model.
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        limit = max(1 << 20, m * 4096)  # up to ~150 classes of full-precision numbers per row
        doc = self._call("POST", f"{self.url}/infer", body, limit)
        outputs = doc.get("outputs") if isinstance(doc, dict) else None
        if not isinstance(outputs, list):
            raise EndpointError(f"POST {self.url}/infer: the answer has no outputs")
        read = []
        for item in outputs:
            if not isinstance(item, dict):
                continue
            try:
                values = np.asarray(item["data"], dtype=np.float64)
                shape = [int(s) for s in item["shape"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise EndpointError(
                    f"POST {self.url}/infer: unusable output {item.get('name')!r}: {exc}"
                ) from None
            read.append((str(item.get("name")), values.ravel(), shape))
        return read


# gRPC status codes worth another try: the server or the path to it was busy, restarting or slow.
_GRPC_RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED")
_GRPC_MAX_MESSAGE = (1 << 31) - 1


class GrpcEndpointClient(_BatchedClient):
    """Batched, bounded, retried V2 inference over the protocol's gRPC service, binary tensors."""

    protocol = "Open Inference Protocol V2 (gRPC)"

    def __init__(self, url: str, headers: dict[str, str], settings: EndpointSettings) -> None:
        import grpc
        from open_inference.grpc.service import GRPCInferenceServiceStub

        super().__init__(url, settings)
        parts = urlsplit(url)
        _, self.model_name, self.model_version = parse_endpoint(url)
        # gRPC metadata keys are lower-case; the content type is gRPC's own
        self.headers = tuple((k.lower(), v) for k, v in headers.items() if k.lower() != "content-type")
        self.max_request_bytes = _env_int("XAC_OIP_GRPC_MAX_MESSAGE", 4 << 20, least=1 << 17)
        # gRPC's message limits are C ints: an answer of up to ~150 classes of doubles per row
        self.limit = min(_GRPC_MAX_MESSAGE, max(1 << 20, settings.batch_rows * 4096))
        options = [
            ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),  # what this client builds
            ("grpc.max_receive_message_length", self.limit),
        ]
        if parts.scheme == "grpcs":
            self.channel = grpc.secure_channel(parts.netloc, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(parts.netloc, options)
        self.stub = GRPCInferenceServiceStub(self.channel)

    def rows_per_request(self, n_features: int, itemsize: int) -> int:
        """Up to ``batch_rows``, but no request over the server's gRPC message limit
        (``XAC_OIP_GRPC_MAX_MESSAGE``, default gRPC's own 4 MiB, which servers keep unless set)."""
        room = self.max_request_bytes - (64 << 10)  # headroom for the request's other fields
        return max(1, min(self.settings.batch_rows, room // max(1, n_features * itemsize)))

    def _call(self, what: str, method: Any, request: Any) -> Any:
        import grpc

        last: grpc.RpcError | None = None
        tries = 0
        for attempt in range(self.settings.retries + 1):
            tries = attempt + 1
            if attempt:
                time.sleep(min(10.0, 0.2 * 2 ** (attempt - 1)))
            try:
                return method(request, timeout=self.settings.timeout_seconds, metadata=self.headers)
            except grpc.RpcError as exc:
                last = exc
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is None or code.name not in _GRPC_RETRIED:
                    break
        code = last.code().name if isinstance(last, grpc.Call) else "?"
        details = last.details() if isinstance(last, grpc.Call) else str(last)
        retried = f", after {tries - 1} retries" if tries > 1 else ""
        raise EndpointError(f"{what} {self.url} failed (gRPC {code}{retried}): {details}")

    def metadata(self) -> dict[str, Any]:
        from open_inference.grpc.protocol import ModelMetadataRequest

        request = ModelMetadataRequest(name=self.model_name)
        if self.model_version:
            request.version = self.model_version
        answer = self._call("ModelMetadata", self.stub.ModelMetadata, request)

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "datatype": t.datatype, "shape": [int(s) for s in t.shape]} for t in items
            ]

        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": tensors(answer.inputs),
            "outputs": tensors(answer.outputs),
        }

    def _send_block(
        self,
        cast: np.ndarray,
        target: InferTarget,
    ) -> list[tuple[str, np.ndarray, list[int]]]:
        from open_inference.grpc.protocol import ModelInferRequest

        m = cast.shape[0]
        little = cast.astype(cast.dtype.newbyteorder("<"), copy=False)  # the protocol's byte order
        datatype, per_column = target.datatype, target.per_column
        if per_column is None:
            inputs = [
                ModelInferRequest.InferInputTensor(
                    name=target.input_name, datatype=datatype, shape=[m, cast.shape[1]]
                )
            ]
            raw = [little.tobytes()]
        else:
            inputs = [
                ModelInferRequest.InferInputTensor(name=column, datatype=datatype, shape=[m, 1])
                for column in per_column
            ]
            raw = [np.ascontiguousarray(little[:, k]).tobytes() for k in range(len(per_column))]
        request = ModelInferRequest(model_name=self.model_name, inputs=inputs, raw_input_contents=raw)
        if self.model_version:
            request.model_version = self.model_version
        if target.output is not None:
            request.outputs.append(ModelInferRequest.InferRequestedOutputTensor(name=target.output))
        answer = self._call("ModelInfer", self.stub.ModelInfer, request)
        read = []
        for index, item in enumerate(answer.outputs):
            shape = [int(s) for s in item.shape]
            kind = _DATATYPES.get(item.datatype.upper())
            if index < len(answer.raw_output_contents):
                if kind is None:
                    raise EndpointError(
                        f"{self.url} (infer): output {item.name!r} is {item.datatype}, not a float type"
                    )
                data = answer.raw_output_contents[index]
                if len(data) % np.dtype(kind).itemsize:
                    raise EndpointError(
                        f"{self.url} (infer): output {item.name!r}: {len(data)} bytes of {item.datatype}"
                    )
                values = np.frombuffer(data, dtype=np.dtype(kind).newbyteorder("<")).astype(np.float64)
            else:
                contents = item.contents
                typed = [
                    contents.fp64_contents,
                    contents.fp32_contents,
                    contents.int64_contents,
                    contents.int_contents,
                ]
                values = np.asarray(next((list(c) for c in typed if len(c)), []), dtype=np.float64)
            read.append((item.name, values, shape))
        return read


def endpoint_client(url: str, headers: dict[str, str], settings: EndpointSettings) -> _BatchedClient:
    """The client for ``url``'s transport: gRPC for grpc(s)://, REST otherwise."""
    kind = GrpcEndpointClient if urlsplit(url).scheme in GRPC_SCHEMES else EndpointClient
    return kind(url, headers, settings)


def _declared(metadata: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = metadata.get(key) or []
    return (
        [i for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
        if isinstance(items, list)
        else []
    )


def load_endpoint(location: str, options: LoadOptions) -> SourceModel:
    from include.explainers.sources.blackbox import BlackBoxModule

    headers = {}
    if options.connection:
        linked = endpoint_connection(options.connection, options.model_name or "model")
        headers = linked.headers
        location = location or linked.url or ""
        if not location:
            raise ModelLoadError(
                f"Airflow connection {options.connection!r} names no host, and the source no uri"
            )
    url, name, version = parse_endpoint(location)
    settings = EndpointSettings.from_env()
    client = endpoint_client(url, {**headers, **_headers(options)}, settings)
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

    target = InferTarget(input_name, datatype, output, tuple(per_column) if per_column else None)

    def predict(rows: np.ndarray) -> np.ndarray:
        return client.infer(rows, target)

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
            client.protocol,
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
