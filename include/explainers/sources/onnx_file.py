"""ONNX models through onnxruntime: the perturbation methods (no gradients through a session).

``onnx:PATH`` takes either

* one 2-D input ``(N, F)`` of the feature columns in order (``torch.onnx.export``, most
  converters), its width checked against the columns; or
* one ``(N, 1)`` input per feature column, named after it (skl2onnx with per-column inputs), the
  names checked against the columns.

The output read is the first float tensor output, preferring one whose name says probabilities
(skl2onnx classifiers with ``zipmap=False`` emit ``label`` and ``probabilities``): then the model
is a classifier on the probability scale; otherwise one column is a regression output and several
are class logits, unless the config or ``--task`` says otherwise. Gradient methods are refused
before any work (the source is not differentiable).
"""

from __future__ import annotations

import numpy as np

from include.explainers.errors import ModelLoadError
from include.explainers.sources import (
    LoadOptions,
    ModelOrigin,
    ModelSource,
    OutputSpec,
    SourceModel,
    artifact_file,
)

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def load_onnx(location: str, options: LoadOptions) -> SourceModel:
    import onnxruntime as ort

    from include.explainers.sources.blackbox import BlackBoxModule

    with artifact_file(location, "onnx") as (path, digest):
        settings = ort.SessionOptions()
        settings.log_severity_level = 3  # errors only: the task log is for the run
        try:
            session = ort.InferenceSession(
                path.read_bytes(), sess_options=settings, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf
            raise ModelLoadError(f"{location} is not a loadable ONNX model: {exc}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    float_outputs = [o for o in outputs if o.type in _NUMPY_TYPES]
    if not float_outputs:
        raise ModelLoadError(
            f"{location}: no float tensor output among {', '.join(f'{o.name} ({o.type})' for o in outputs)}; "
            "export classifiers without ZipMap (skl2onnx: options={'zipmap': False})"
        )
    probability_outputs = [o for o in float_outputs if "prob" in o.name.lower()]
    chosen = (probability_outputs or float_outputs)[0]
    bad = [f"{i.name} ({i.type})" for i in inputs if i.type not in _NUMPY_TYPES]
    if bad:
        raise ModelLoadError(f"{location}: inputs must be float tensors; got {', '.join(bad)}")
    input_dtype = _NUMPY_TYPES[inputs[0].type]
    if len(inputs) == 1:
        shape = inputs[0].shape
        if len(shape) != 2:
            raise ModelLoadError(
                f"{location}: the input {inputs[0].name} has shape {shape}; expected (N, features)"
            )
        width = shape[1] if isinstance(shape[1], int) else None
        name = inputs[0].name

        def predict(rows: np.ndarray) -> np.ndarray:
            return session.run([chosen.name], {name: rows})[0]

        input_names, n_inputs = None, width
    else:
        names = [i.name for i in inputs]
        dtypes = [_NUMPY_TYPES[i.type] for i in inputs]

        def predict(rows: np.ndarray) -> np.ndarray:
            feed = {
                n: rows[:, [k]].astype(t, copy=False)
                for k, (n, t) in enumerate(zip(names, dtypes, strict=True))
            }
            return session.run([chosen.name], feed)[0]

        input_names, n_inputs = tuple(names), None
    output = None
    if chosen in probability_outputs:
        width = chosen.shape[1] if len(chosen.shape) == 2 and isinstance(chosen.shape[1], int) else None
        output = OutputSpec("binary" if width == 2 else "multiclass", "probabilities")
    import torch

    return SourceModel(
        module=BlackBoxModule(
            predict, input_dtype, f"onnxruntime session of {location} (output {chosen.name})"
        ),
        differentiable=False,
        origin=ModelOrigin(
            "onnx",
            location,
            (digest,),
            options.version,
            "ONNX",
            {"output": chosen.name, "inputs": ",".join(i.name for i in inputs)},
        ),
        output=output,
        input_names=input_names,
        n_inputs=n_inputs,
        dtype=torch.float64,
    )


SOURCES = {
    "onnx": ModelSource(
        "onnx",
        "An ONNX model run by onnxruntime (CPU): the perturbation methods (KernelSHAP, ExactShapley, "
        "LIME, Occlusion, Counterfactual); gradient methods are refused.",
        "ONNX protobuf",
        False,
        load_onnx,
    ),
}
