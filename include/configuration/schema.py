"""The ExplainerConfiguration schema (pydantic v2); `xac config schema` exports it as JSON Schema.

Field names are the YAML keys themselves (camelCase, as users write them), so a validation
error's location is directly the path in the file. Every model forbids unknown fields: a typo
is an error, not a silently ignored setting.
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from include.identifiers import MODEL_VERSION_PATTERN

API_VERSION = "ai.apexlogic.com/v1alpha1"
KIND = "ExplainerConfiguration"

# Placeholders a storage path template may use; anything else is refused at validation time.
PATH_PLACEHOLDERS: frozenset[str] = frozenset(
    {"model_name", "model_version", "inference_id", "config_name", "namespace"}
)

SHAP_METHODS = ("KernelSHAP", "ExactShapley", "TreeSHAP", "GradientSHAP", "DeepSHAP")
# GradientSHAP and DeepSHAP are SHAP estimators computed with Captum: either type accepts them.
CAPTUM_METHODS = ("IntegratedGradients", "Saliency", "GradientSHAP", "DeepSHAP", "Occlusion")
LIME_METHODS = ("LIME",)
COUNTERFACTUAL_METHODS = ("Counterfactual",)
ATTENTION_METHODS = ("AttentionRollout",)
METHODS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "SHAP": SHAP_METHODS,
    "Captum": CAPTUM_METHODS,
    "LIME": LIME_METHODS,
    "Counterfactual": COUNTERFACTUAL_METHODS,
    "Attention": ATTENTION_METHODS,
}
# Kept equal to the runtime's registry (include.explainers.base.METHOD_MODULES) by a test; not
# imported from there because the runtime's package imports this module (via the catalogue).
ALL_METHODS: tuple[str, ...] = tuple(
    dict.fromkeys(m for methods in METHODS_BY_TYPE.values() for m in methods)
)
EXPLAINER_TYPES: tuple[str, ...] = tuple(METHODS_BY_TYPE)
# The method-specific settings each method accepts (the background settings apply to all); any
# other one set in a config is reported at its line.
METHOD_SETTINGS: dict[str, frozenset[str]] = {
    "KernelSHAP": frozenset({"numSamples", "imageSuperpixel"}),
    "IntegratedGradients": frozenset(
        {
            "steps",
            "integrationMethod",
            "baseline",
            "internalBatchSize",
            "completenessTolerance",
            "precision",
            "compile",
        }
    ),
    "LIME": frozenset({"numSamples", "kernelWidth"}),
    "Counterfactual": frozenset({"numSamples"}),
    "ExactShapley": frozenset({"imageSuperpixel"}),
    "TreeSHAP": frozenset(),
    "Saliency": frozenset({"abs"}),
    "GradientSHAP": frozenset({"numSamples", "stdevs"}),
    "DeepSHAP": frozenset(),
    "Occlusion": frozenset({"baseline", "slidingWindow", "strides"}),
    "AttentionRollout": frozenset({"headFusion"}),
}

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

_CPU_RE = re.compile(r"^([0-9]+(\.[0-9]+)?)(m)?$")
_MEMORY_RE = re.compile(r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
MAX_CPU_CORES = 512
MAX_MEMORY_BYTES = 4 * 2**40
MAX_GPUS = 16


def parse_cpu(value: str) -> float:
    """Kubernetes CPU quantity ("200m", "1", "0.5") → cores."""
    match = _CPU_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a CPU quantity (examples: '200m', '1', '2.5')")
    cores = float(match.group(1)) / (1000 if match.group(3) else 1)
    if cores <= 0:
        raise ValueError("must be greater than 0")
    if cores > MAX_CPU_CORES:
        raise ValueError(f"{value!r} is more than {MAX_CPU_CORES} cores")
    return cores


MIN_MEMORY_BYTES = 1 << 20


def parse_memory(value: str) -> int:
    """Kubernetes memory quantity ("512Mi", "2Gi", "1G", "1048576") → bytes."""
    match = _MEMORY_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a memory quantity (examples: '512Mi', '2Gi')")
    amount = float(match.group(1)) * _MEMORY_FACTORS[match.group(3)]
    if amount < MIN_MEMORY_BYTES:  # "0.5" is half a byte: a typo for 0.5Gi, not a request
        raise ValueError(
            f"{value!r} is less than 1Mi (memory is in bytes unless a unit is given: '512Mi', '2Gi')"
        )
    if amount > MAX_MEMORY_BYTES:
        raise ValueError(f"{value!r} is more than 4Ti")
    return int(amount)


def parse_gpu(value: str) -> Decimal:
    """GPU count: whole GPUs ("1", "2") or a fraction of one ("0.1": a MIG slice or time-sliced share)."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of GPUs (examples: '1', '0.5')") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be 0 or more")
    if amount > 1 and amount != amount.to_integral_value():
        raise ValueError(
            f"{value!r}: more than one GPU must be a whole number; nvidia.com/gpu cannot be scheduled "
            "as a fraction above 1 (fractions below 1 map to a MIG profile or time-sliced share)"
        )
    if amount > MAX_GPUS:
        raise ValueError(f"{value!r} is more than {MAX_GPUS} GPUs")
    return amount


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


# The DAG of a config that does not validate is named INVALID_DAG_PREFIX + its file name.
INVALID_DAG_PREFIX = "xac-invalid-"


class Metadata(StrictModel):
    name: Annotated[str, Field(pattern=_DNS_LABEL, description="DNS label; becomes the DAG id.")]
    namespace: Annotated[str | None, Field(pattern=_DNS_LABEL)] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(INVALID_DAG_PREFIX):
            raise ValueError(
                f"names starting with {INVALID_DAG_PREFIX!r} are reserved for the DAGs of invalid configs"
            )
        return value


class ExplainerSettings(StrictModel):
    """`spec.explainerConfig`: the method and its parameters (which apply depends on the method)."""

    method: Literal[ALL_METHODS] = Field(  # type: ignore[valid-type]
        description="The explanation method; explainerType groups them: "
        + "; ".join(f"{t}: {', '.join(ms)}" for t, ms in METHODS_BY_TYPE.items())
        + "."
    )
    numSamples: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="KernelSHAP: coalitions sampled per explained row (default 500); LIME: perturbations "
        "per row (default 5000); Counterfactual: random search directions per row (default 256).",
    )
    kernelWidth: Annotated[float, Field(gt=0, le=1_000_000)] | None = Field(
        default=None, description="LIME: width of the proximity kernel (default 0.75 * sqrt(features))."
    )
    backgroundDataStrategy: Literal["random_subset", "kmeans", "all"] = "random_subset"
    backgroundDataSubsetSize: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 100
    imageSuperpixel: Annotated[int, Field(strict=True, ge=1, le=8)] | None = Field(
        default=None,
        description="KernelSHAP / ExactShapley on images: side of the square pixel groups (default 2).",
    )
    steps: Annotated[int, Field(strict=True, ge=2, le=10_000)] | None = Field(
        default=None, description="IntegratedGradients: integration steps (default 50)."
    )
    integrationMethod: (
        Literal[
            "gausslegendre",
            "gausslegendre_adaptive",
            "riemann_left",
            "riemann_right",
            "riemann_middle",
            "riemann_trapezoid",
        ]
        | None
    ) = None
    completenessTolerance: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None,
        description="IntegratedGradients, gausslegendre_adaptive: completeness gap to reach (default 1e-3).",
    )
    baseline: Literal["zeros", "background_mean"] | None = None
    abs: bool | None = Field(default=None, description="Saliency: report |gradient| (default false).")
    stdevs: Annotated[float, Field(ge=0, lt=100)] | None = Field(
        default=None,
        description="GradientSHAP: input noise per draw, in background standard deviations (default 0).",
    )
    slidingWindow: Annotated[int, Field(strict=True, ge=1, le=4096)] | None = Field(
        default=None, description="Occlusion on images: side of the square occlusion window (default 2)."
    )
    strides: Annotated[int, Field(strict=True, ge=1, le=4096)] | None = Field(
        default=None, description="Occlusion on images: window step in pixels (default: the window side)."
    )
    headFusion: Literal["mean", "max", "min"] | None = Field(
        default=None, description="AttentionRollout: how a layer's heads are combined (default mean)."
    )
    internalBatchSize: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] | None = None
    precision: Literal["fp32", "bf16"] | None = Field(
        default=None,
        description="IntegratedGradients: fp32 (default) or bf16 autocast of the model's forward/backward.",
    )
    compile: bool | None = Field(
        default=None, description="IntegratedGradients: run the model through torch.compile (default false)."
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)] = 0


class InferenceServiceRef(StrictModel):
    name: Annotated[str, Field(pattern=_DNS_LABEL)]
    namespace: Annotated[str | None, Field(pattern=_DNS_LABEL)] = None


class Integration(StrictModel):
    inferenceServiceRef: InferenceServiceRef | None = None
    explanationEndpoint: Annotated[str | None, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = None


# A bundle key is prefix + runs/<run>/explanations/<file>: leave room for them within S3's 1024 bytes.
MAX_PATH_TEMPLATE_BYTES = 512


class Storage(StrictModel):
    type: Literal["s3"] = "s3"
    bucket: Annotated[str, Field(pattern=_BUCKET, description="S3 bucket name.")]

    @field_validator("bucket")
    @classmethod
    def _s3_bucket_rules(cls, value: str) -> str:
        """S3's naming rules beyond the character set, so a bad name fails here and not at publish."""
        if ".." in value or ".-" in value or "-." in value:
            raise ValueError(f"{value!r}: S3 bucket names have no '..', '.-' or '-.'")
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value):
            raise ValueError(f"{value!r}: S3 bucket names must not look like an IP address")
        if value.startswith(("xn--", "sthree-")) or value.endswith(
            ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
        ):
            raise ValueError(f"{value!r}: S3 reserves this prefix or suffix")
        return value

    kmsKeyId: Annotated[str, Field(min_length=1, max_length=2048)] | None = Field(
        default=None,
        description="Encrypt every bundle object with SSE-KMS under this key (id, ARN or alias).",
    )
    path: str = Field(
        description=(
            "Key template of one explanation. Placeholders: "
            + ", ".join(sorted("{" + p + "}" for p in PATH_PLACEHOLDERS))
            + "; {inference_id} must be in the file name."
        )
    )

    @field_validator("path")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        try:
            fields = [
                (name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name
            ]
        except ValueError as exc:
            raise ValueError(f"path template {template!r} is malformed: {exc}") from None
        unknown = sorted({name for name, _, _ in fields if name not in PATH_PLACEHOLDERS})
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                f"allowed: {', '.join(sorted('{' + p + '}' for p in PATH_PLACEHOLDERS))}"
            )
        if any(spec or conv for _, spec, conv in fields):
            raise ValueError("placeholders take no format spec or conversion (write {model_version})")
        if template.startswith("/") or ".." in template.split("/"):
            raise ValueError("path template must be relative and must not contain '..'")
        # Problems S3 or the bundle listing would only meet at publish, after all the work:
        if len(template.encode()) > MAX_PATH_TEMPLATE_BYTES:
            raise ValueError(f"path template is over {MAX_PATH_TEMPLATE_BYTES} bytes (S3 keys end at 1024)")
        if "\\" in template or any(ord(c) < 32 or ord(c) == 127 for c in template):
            raise ValueError("path template must not contain backslashes or control characters")
        segments = template.split("/")
        if any(segment in ("", ".") for segment in segments):
            raise ValueError("path template must not contain empty or '.' segments ('a//b', './a')")
        if segments[0].startswith("_"):
            raise ValueError(
                f"path template must not start with {segments[0]!r}: top-level names starting with '_' are "
                "reserved (_keys/, _staging/)"
            )
        directory, _, file_name = template.rpartition("/")
        if "{inference_id}" not in file_name:
            raise ValueError("the file name (last path segment) must contain {inference_id}")
        if "{inference_id}" in directory:
            raise ValueError("{inference_id} may only appear in the file name, not in a folder")
        return template


class ResourceRequirements(StrictModel):
    cpu: str = "1"
    memory: str = "1Gi"
    gpu: str | int | float = "0"

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        parse_cpu(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory(value)
        return value

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | int | float) -> str:
        if isinstance(value, bool):
            raise ValueError("must be a number of GPUs, not a boolean")
        parse_gpu(str(value))
        return str(value)

    @property
    def cpu_cores(self) -> float:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def gpu_count(self) -> float:
        return float(parse_gpu(str(self.gpu)))


class Monitoring(StrictModel):
    enabled: bool = True
    alertOnFidelityDrop: bool = False
    fidelityThreshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        default=None, description="Minimum fidelity score in [0, 1]; its meaning per method is in README."
    )


class Owner(StrictModel):
    team: Annotated[str, Field(min_length=1, max_length=128)]
    email: Annotated[str, Field(pattern=_EMAIL)]
    costCenter: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Budget(StrictModel):
    maxCostPerRun: Annotated[float, Field(gt=0, le=1_000_000)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    onExceed: Literal["fail", "shrink"] = Field(
        default="fail",
        description="When the pre-flight estimate exceeds the budget: stop the run, or lower "
        "numSamples/steps to fit (recorded in the bundle).",
    )


class InferenceSelection(StrictModel):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, description="Entity keys to explain by default (a run's Param overrides)."
    )
    count: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 8


class RetentionTransition(StrictModel):
    days: Annotated[int, Field(strict=True, ge=1, le=36_500)]
    storageClass: Literal[
        "STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"
    ]


def _default_transitions() -> list[RetentionTransition]:
    # Glacier Instant Retrieval keeps old bundles downloadable at once, at a fraction of STANDARD's price.
    return [RetentionTransition(days=90, storageClass="GLACIER_IR")]


class Retention(StrictModel):
    """How long bundles are kept, and how (S3 lifecycle rules on the config's prefix, Object Lock)."""

    years: Annotated[int, Field(strict=True, ge=1, le=100)] = 10
    objectLockMode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        default=None,
        description="Object Lock mode of every bundle object (the bucket must have Object Lock).",
    )
    transitions: list[RetentionTransition] = Field(default_factory=_default_transitions)


# Airflow's schedule presets; anything else must be a cron expression (checked with croniter, which
# Airflow itself uses) so that a typo is reported here instead of breaking the DAG file's import.
SCHEDULE_PRESETS = (
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
)


class AirflowSettings(StrictModel):
    schedule: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    retries: Annotated[int, Field(strict=True, ge=0, le=20)] = 2
    retryDelaySeconds: Annotated[int, Field(strict=True, ge=0, le=86_400)] = 30
    # Airflow refuses tags over 100 characters when it serialises the DAG (it would drop the DAG)
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=50)] = Field(
        default_factory=list
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or value in SCHEDULE_PRESETS:
            return value
        try:
            from croniter import croniter
        except ImportError:  # the explainer image: no Airflow, nothing is scheduled there
            return value
        if not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is neither a cron expression (e.g. '0 6 * * *') nor one of "
                f"{', '.join(SCHEDULE_PRESETS)}"
            )
        return value


class Spec(StrictModel):
    modelName: Annotated[str, Field(min_length=1, max_length=128)]
    modelVersion: Annotated[str, Field(pattern=MODEL_VERSION_PATTERN)] | None = None
    featureService: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    # Optional in the schema so that the policy gate, not the parser, names what is missing.
    explainerType: Literal[EXPLAINER_TYPES] | None = None  # type: ignore[valid-type]
    explainerConfig: ExplainerSettings | None = None
    integration: Integration | None = None
    outputFormat: Literal["json", "parquet"] = "json"
    storage: Storage
    resourceRequirements: ResourceRequirements = Field(default_factory=ResourceRequirements)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    owner: Owner | None = None
    budget: Budget | None = None
    inference: InferenceSelection = Field(default_factory=InferenceSelection)
    retention: Retention = Field(default_factory=Retention)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)


class ExplainerConfiguration(StrictModel):
    apiVersion: Literal["ai.apexlogic.com/v1alpha1"]
    kind: Literal["ExplainerConfiguration"]
    metadata: Metadata
    spec: Spec


Location = tuple[str | int, ...]


def semantic_problems(config: ExplainerConfiguration) -> list[tuple[Location, str]]:
    """Checks across fields, each reported at the field a user must change."""
    spec = config.spec
    problems: list[tuple[Location, str]] = []
    settings = spec.explainerConfig
    if settings is not None:
        if spec.explainerType is not None and settings.method not in METHODS_BY_TYPE[spec.explainerType]:
            allowed = ", ".join(METHODS_BY_TYPE[spec.explainerType])
            problems.append(
                (
                    ("spec", "explainerConfig", "method"),
                    f"{settings.method!r} is not a {spec.explainerType} method (use one of: {allowed})",
                )
            )
        specific = frozenset().union(*METHOD_SETTINGS.values())
        allowed_settings = METHOD_SETTINGS.get(settings.method, specific)
        for name in sorted(specific - allowed_settings):
            if getattr(settings, name, None) is not None:
                problems.append(
                    (("spec", "explainerConfig", name), f"does not apply to method {settings.method}")
                )
    suffix = spec.storage.path.rsplit(".", 1)[-1] if "." in spec.storage.path else ""
    if suffix in {"json", "parquet"} and suffix != spec.outputFormat:
        problems.append(
            (("spec", "storage", "path"), f"ends in .{suffix} but outputFormat is {spec.outputFormat!r}")
        )
    return problems


def json_schema() -> dict[str, Any]:
    schema = ExplainerConfiguration.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://explainability-as-code.dev/schemas/explainer-configuration.v1alpha1.json"
    schema["title"] = KIND
    return schema
