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
LIME = "LIME"
COUNTERFACTUAL = "Counterfactual"
EXACT_SHAPLEY = "ExactShapley"
TREE_SHAP = "TreeSHAP"
SALIENCY = "Saliency"
GRADIENT_SHAP = "GradientSHAP"
DEEP_SHAP = "DeepSHAP"
OCCLUSION = "Occlusion"
ATTENTION_ROLLOUT = "AttentionRollout"

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
PRECISIONS = ("fp32", "bf16")
HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an explanation method."""

    name: str
    kind: str  # "int" | "float" | "bool" | "choice" | "baseline"
    default: Any  # None means "chosen at run time" (documented in ``doc``)
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    image_only: bool = False  # only meaningful for models with an image input
    minimum_inclusive: bool = False  # floats: whether the minimum itself is allowed


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
        "precision": ParamSpec(
            "precision",
            "choice",
            "fp32",
            "fp32, or bf16: the model's forward/backward under bf16 autocast (faster on GPUs with "
            "bf16 tensor cores; completeness error then near 1e-3 to 1e-2 relative, gated as usual).",
            choices=PRECISIONS,
        ),
        "compile": ParamSpec(
            "compile",
            "bool",
            False,
            "Run the explained output through torch.compile (seconds to a minute of compilation "
            "per process; XAC_COMPILE_CACHE shares the compiled artifacts between shards).",
        ),
    },
}


# The background parameters mean the same for every method that summarises a background (LIME and
# Counterfactual take each feature's scale from it; ExactShapley and TreeSHAP integrate over it).
_BACKGROUND_PARAMS = {
    name: PARAMETERS[KERNEL_SHAP][name] for name in ("backgroundDataStrategy", "backgroundDataSubsetSize")
}
PARAMETERS[LIME] = {
    "numSamples": ParamSpec(
        "numSamples",
        "int",
        5000,
        "Perturbations drawn around each instance (lime's num_samples; the first is the instance itself).",
        minimum=10,
        maximum=1_000_000,
    ),
    "kernelWidth": ParamSpec(
        "kernelWidth",
        "float",
        None,
        "Width of the exponential proximity kernel sqrt(exp(-d^2 / width^2)), d in background standard "
        "deviations. Default: 0.75 * sqrt(number of features), as in lime.",
        minimum=0.0,
        maximum=1e6,
    ),
    **_BACKGROUND_PARAMS,
}
PARAMETERS[COUNTERFACTUAL] = {
    "numSamples": ParamSpec(
        "numSamples",
        "int",
        256,
        "Random search directions per instance, besides the 2 per feature along the axes.",
        minimum=2,
        maximum=100_000,
    ),
    **_BACKGROUND_PARAMS,
}
PARAMETERS[EXACT_SHAPLEY] = {
    **_BACKGROUND_PARAMS,
    "imageSuperpixel": PARAMETERS[KERNEL_SHAP]["imageSuperpixel"],
}
PARAMETERS[TREE_SHAP] = dict(_BACKGROUND_PARAMS)


# The gradient/perturbation family (Captum-backed; see include/explainers/gradient_family.py).
PARAMETERS[SALIENCY] = {
    "abs": ParamSpec(
        "abs",
        "bool",
        False,
        "Report |gradient| instead of the signed gradient (captum's abs). Default false here: the sign "
        "says which way a feature pushes, and the fidelity metric compares signed predictions.",
    ),
}
PARAMETERS[GRADIENT_SHAP] = {
    "numSamples": ParamSpec(
        "numSamples",
        "int",
        64,
        "Draws (background baseline, path point, noise) per instance (captum n_samples).",
        minimum=1,
        maximum=100_000,
    ),
    "stdevs": ParamSpec(
        "stdevs",
        "float",
        0.0,
        "Standard deviation of the Gaussian noise added to the input for each draw, in units of each "
        "feature's background standard deviation (captum stdevs, applied in standardised coordinates).",
        minimum=0.0,
        maximum=100.0,
        minimum_inclusive=True,
    ),
    **_BACKGROUND_PARAMS,
}
PARAMETERS[DEEP_SHAP] = dict(_BACKGROUND_PARAMS)
PARAMETERS[OCCLUSION] = {
    "baseline": ParamSpec(
        "baseline",
        "baseline",
        None,
        "Value an occluded feature takes: zeros | background_mean, for every modality, or a mapping "
        "modality -> choice. Default: zeros for images, the background mean for tabular features.",
        choices=BASELINES,
    ),
    "slidingWindow": ParamSpec(
        "slidingWindow",
        "int",
        None,
        "Side in pixels of the square occlusion window on image inputs (all channels). Default 2. "
        "Tabular features are always occluded one at a time.",
        minimum=1,
        maximum=4096,
        image_only=True,
    ),
    "strides": ParamSpec(
        "strides",
        "int",
        None,
        "Pixels the window moves per step (default: the window side). The windows must tile the image.",
        minimum=1,
        maximum=4096,
        image_only=True,
    ),
}


# Intrinsic attention attributions (include/explainers/attention.py).
PARAMETERS[ATTENTION_ROLLOUT] = {
    "headFusion": ParamSpec(
        "headFusion",
        "choice",
        "mean",
        "How the heads of a layer are combined before the rollout: mean (Abnar & Zuidema), max or min.",
        choices=HEAD_FUSIONS,
    ),
}


def _check_float(spec: ParamSpec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ParameterError(f"parameter {spec.name} must be a number, got {value!r}")
    low, high = spec.minimum, spec.maximum
    below = low is not None and (value < low if spec.minimum_inclusive else value <= low)
    if below or (high is not None and value >= high):
        opening = "[" if spec.minimum_inclusive else "("
        raise ParameterError(f"parameter {spec.name} must be in {opening}{low}, {high}), got {value!r}")
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


# The parameter that sets how much work a run does per instance (what a run's sample budget overrides
# and what the cost plan scales or lowers). Methods without one do a fixed amount of work per instance.
WORK_PARAMETER_NAMES = ("numSamples", "steps")


def work_parameter(method: str) -> ParamSpec | None:
    """The spec of ``method``'s work knob (numSamples or steps), or None when it has none."""
    specs = method_parameters(method)
    for name in WORK_PARAMETER_NAMES:
        if name in specs:
            return specs[name]
    return None


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
        elif spec.kind == "bool":
            if not isinstance(value, bool):
                raise ParameterError(f"parameter {name} must be true or false, got {value!r}")
            out[name] = value
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
