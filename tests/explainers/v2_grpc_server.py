"""A small Open Inference Protocol gRPC server on 127.0.0.1, with faults on demand (tests only).

The gRPC twin of :mod:`tests.explainers.v2_server`: ``ModelMetadata`` and ``ModelInfer`` (raw or
typed contents) for a numpy function, served by a real ``grpc.server`` in the test process.
``faults`` is a queue the test fills; each ``ModelInfer`` takes the next one, if any:
``("code", "UNAVAILABLE")`` (abort with that status), ``("slow", s)`` (answer after s seconds) or
``("shape", 0)`` (an answer with the wrong row count). ``headers`` records the metadata of the last
call. MLServer's own gRPC port is used where faults are not needed (test_mlserver.py).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from open_inference.grpc import protocol as pb
from open_inference.grpc.service import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)


class V2GrpcServer(GRPCInferenceServiceServicer):
    def __init__(
        self,
        name: str,
        predict: Callable[[np.ndarray], np.ndarray],
        inputs: list[tuple[str, str, list[int]]] | None = None,
        output: str = "predict_proba",
        raw_outputs: bool = True,
    ) -> None:
        self.name = name
        self.predict = predict
        self.inputs = inputs or []
        self.output = output
        self.raw_outputs = raw_outputs
        self.faults: collections.deque[tuple[str, Any]] = collections.deque()
        self.infer_requests = 0
        self.rows = 0
        self.max_rows = 0  # in one request
        self.headers: dict[str, str] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_GRPCInferenceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}/v2/models/{self.name}"

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Model {request.name} not found")
        tensors = [
            pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in self.inputs
        ]
        return pb.ModelMetadataResponse(name=self.name, versions=["1"], platform="test", inputs=tensors)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.infer_requests += 1
        self.headers = {k: v for k, v in context.invocation_metadata()}
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault[0] == "code":
            context.abort(getattr(grpc.StatusCode, fault[1]), "injected")
        if fault is not None and fault[0] == "slow":
            time.sleep(fault[1])
        tensor = request.inputs[0]
        rows = np.frombuffer(request.raw_input_contents[0], dtype="<f8").reshape(list(tensor.shape))
        out = np.asarray(self.predict(rows), dtype=np.float64)
        self.rows += rows.shape[0]
        self.max_rows = max(self.max_rows, rows.shape[0])
        if fault is not None and fault[0] == "shape":
            out = out[:-1]
        item = pb.ModelInferResponse.InferOutputTensor(
            name=self.output, datatype="FP64", shape=list(out.shape)
        )
        answer = pb.ModelInferResponse(model_name=self.name, outputs=[item])
        if self.raw_outputs:
            answer.raw_output_contents.append(out.astype("<f8").tobytes())
        else:
            answer.outputs[0].contents.fp64_contents.extend(out.ravel().tolist())
        return answer

    def __enter__(self) -> V2GrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)
