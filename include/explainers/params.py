"""Method parameters: names, defaults, allowed values — and their validation.

Kept free of heavy imports so that the configuration validator (the ``xac`` CLI) can check an
``explainerConfig`` block without importing torch. Keys are camelCase, exactly as written in the
YAML configuration. Unknown keys are rejected rather than ignored: a typo such as
``numSample`` would otherwise silently fall back to a default and the compliance bundle would
record parameters nobody chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.explainers.errors import MethodNotApplicableError, ParameterError, UnknownMethodError

KERNEL_SHAP = "KernelSHAP"
INTEGRATED_GRADIENTS = "IntegratedGradients"

BACKGROUND_STRATEGIES = ("random_subset", "kmeans", "all")
# captum's integral approximations, plus our adaptive Gauss-Legendre rule (panels refined per row until
# the completeness gap is within completenessTolerance; ``steps`` is then the cap on evaluations).
INTEGRATION_METHODS = (
    "gausslegendre",
    "gausslegendre_adaptive",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
BASELINES = ("zeros", "background_mean")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an explanation method."""

    name: str
    kind: str  # "int" | "float" | "choice" | "baseline"
    default: Any  # None means "chosen at run time" (documented in ``doc``)
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    image_only: bool = False  # only meaningful for models with an image input


PARAMETERS: dict[str, dict[str, ParamSpec]] = {
    KERNEL_SHAP: {
        "numSamples": ParamSpec(
            "numSamples",
            "int",
            500,
            "Coalitions evaluated per instance (excluding the empty and the full coalition). When "
            "2^players - 2 <= numSamples every coalition is enumerated and the values are exact.",
            minimum=2,
            maximum=1_000_000,
        ),
        "backgroundDataStrategy": ParamSpec(
            "backgroundDataStrategy",
            "choice",
            "random_subset",
            "How the background rows are summarised: random_subset (seeded draw without "
            "replacement), kmeans (weighted k-means centroids, seeded) or all (every row).",
            choices=BACKGROUND_STRATEGIES,
        ),
        "backgroundDataSubsetSize": ParamSpec(
            "backgroundDataSubsetSize",
            "int",
            100,
            "Rows drawn (random_subset) or centroids (kmeans); ignored by all.",
            minimum=1,
            maximum=100_000,
        ),
        "imageSuperpixel": ParamSpec(
            "imageSuperpixel",
            "int",
            2,
            "Side in pixels of the square superpixels that play as one player for image inputs "
            "(2 -> an 8x8 image has 16 players); edge tiles are cut when it does not divide the side.",
            minimum=1,
            maximum=4096,
            image_only=True,
        ),
    },
    INTEGRATED_GRADIENTS: {
        "steps": ParamSpec(
            "steps",
            "int",
            50,
            "Number of points of the path integral (captum n_steps).",
            minimum=1,
            maximum=100_000,
        ),
        "integrationMethod": ParamSpec(
            "integrationMethod",
            "choice",
            "gausslegendre",
            "Quadrature of the path integral (captum method).",
            choices=INTEGRATION_METHODS,
        ),
        "baseline": ParamSpec(
            "baseline",
            "baseline",
            None,
            "zeros | background_mean, for every modality, or a mapping modality -> choice. "
            "Default: zeros for images, the background mean for tabular features.",
            choices=BASELINES,
        ),
        "completenessTolerance": ParamSpec(
            "completenessTolerance",
            "float",
            None,
            "gausslegendre_adaptive only (default 1e-3): refine until "
            "|sum(attr) - (f(x) - f(x'))| <= tolerance x |f(x) - f(x')| per row "
            "(it bounds the sum, not each feature's error).",
            minimum=0.0,
            maximum=1.0,
        ),
        "internalBatchSize": ParamSpec(
            "internalBatchSize",
            "int",
            None,
            "Rows per forward/backward pass (instances x steps). Default: from the free memory "
            "(cgroup-aware), a power of two between 256 and 8192.",
            minimum=1,
            maximum=10_000_000,
        ),
    },
}


def _check_float(spec: ParamSpec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ParameterError(f"parameter {spec.name} must be a number, got {value!r}")
    low, high = spec.minimum, spec.maximum
    if (low is not None and value <= low) or (high is not None and value >= high):
        raise ParameterError(f"parameter {spec.name} must be in ({low}, {high}), got {value!r}")
    return float(value)


def known_methods() -> list[str]:
    """Method names a configuration may use."""
    return list(PARAMETERS)


def method_parameters(method: str) -> dict[str, ParamSpec]:
    """The parameter specs of ``method`` (raises :class:`UnknownMethodError`)."""
    if method not in PARAMETERS:
        raise UnknownMethodError(
            f"unknown explanation method {method!r}; known methods: {', '.join(PARAMETERS)}"
        )
    return PARAMETERS[method]


def _check_int(spec: ParamSpec, value: Any) -> int:
    # bool is an int subclass in Python; "true" is never a sample count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"parameter {spec.name} must be an integer, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterError(f"parameter {spec.name} must be >= {spec.minimum}, got {value}")
    if spec.maximum is not None and value > spec.maximum:
        raise ParameterError(f"parameter {spec.name} must be <= {spec.maximum}, got {value}")
    return value


def _check_baseline(spec: ParamSpec, value: Any, modalities: list[str] | None) -> str | dict[str, str]:
    if isinstance(value, str):
        if value not in spec.choices:
            raise ParameterError(
                f"parameter baseline must be one of {', '.join(spec.choices)}, got {value!r}"
            )
        return value
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, choice in value.items():
            if modalities is not None and key not in modalities:
                raise ParameterError(
                    f"parameter baseline names modality {key!r}; "
                    f"the model's modalities are {', '.join(modalities)}"
                )
            if choice not in spec.choices:
                raise ParameterError(
                    f"parameter baseline[{key}] must be one of {', '.join(spec.choices)}, got {choice!r}"
                )
            out[str(key)] = str(choice)
        return out
    raise ParameterError(f"parameter baseline must be a string or a mapping, got {value!r}")


def normalise_params(
    method: str,
    params: Mapping[str, Any] | None,
    *,
    has_image: bool | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """Validate ``params`` for ``method`` and fill in defaults (``None`` = decided at run time).

    ``has_image``/``modalities`` describe the model when known (the runtime passes them; the
    config validator may not); image-only parameters given for a model without an image raise
    :class:`MethodNotApplicableError`.
    """
    specs = method_parameters(method)
    params = dict(params or {})
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) for {method}: {', '.join(unknown)}; allowed: {', '.join(specs)}"
        )
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in params or params[name] is None:
            out[name] = spec.default
            continue
        value = params[name]
        if spec.image_only and has_image is False:
            raise MethodNotApplicableError(
                f"parameter {name} of {method} applies only to models with an image input; "
                "this model has none"
            )
        if spec.kind == "int":
            out[name] = _check_int(spec, value)
        elif spec.kind == "float":
            out[name] = _check_float(spec, value)
        elif spec.kind == "choice":
            if value not in spec.choices:
                raise ParameterError(
                    f"parameter {name} must be one of {', '.join(spec.choices)}, got {value!r}"
                )
            out[name] = value
        else:
            out[name] = _check_baseline(spec, value, modalities)
    if has_image is False:
        # Recorded parameters should only contain what shaped the result.
        out = {k: v for k, v in out.items() if not specs[k].image_only}
    return out
