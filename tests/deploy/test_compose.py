"""The full local stack (docker-compose.yaml + deploy/) checked without a Docker engine.

1. The compose file, interpolated with its defaults the way `docker compose config` would with no
   .env, validates against the Compose Specification JSON schema (vendored in data/, see its README).
2. It agrees with the repository: bind-mounted host paths, the build context, the Dockerfile and
   its COPY sources exist; every Airflow service runs the common image, environment and mounts; the
   DAGs/plugins folders are where ./dags and ./plugins are mounted; the buckets created by the
   MinIO set-up cover every ``storage.bucket`` of include/configs/explainers/*.yaml; the Airflow
   base image's version is the apache-airflow pin; no image floats on ``latest``.
3. The CeleryExecutor override (docker-compose.celery.yaml), merged onto the base file as Compose
   merges it (``extends`` included; cross-checked with ``docker compose config`` where Compose v2 is
   installed): schema, image pins and paths as above; every Airflow service runs the CeleryExecutor
   with the Redis broker, the metadata DB as result backend and XAC_DEPLOYMENT=shared; every
   connection the tasks read (include/adapters/connections.py) is defined for all of them; the
   worker scales and mounts no shared XAC_HOME; the documented .env commands yield a working key pair.

Each check returns a list of problems, so the tests below also feed it broken copies of the real
file and require the problem to be reported: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from include.configuration import discover_config_files, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
DATA_DIR = Path(__file__).resolve().parent / "data"
SCHEMA_FILE = DATA_DIR / "compose-spec.json"
SCHEMA_README = DATA_DIR / "README.md"
PROMETHEUS_FILE = REPO_ROOT / "deploy" / "prometheus.yml"

COMMON = "x-airflow-common"
# The Airflow components of the official Airflow 3 compose file, with the command each one runs.
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-init": None,
}
# airflow-init runs as root, like the official file's, to hand the volumes to AIRFLOW_UID.
ALLOWED_OVERRIDES = {"airflow-init": {"user"}}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- loading


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-x}``, ``${VAR-x}``,
    ``${VAR:?msg}``, ``${VAR?msg}``, ``${VAR:+x}``, ``${VAR+x}`` (no nesting: this file needs none)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parts = _BRACED.match(match["braced"])
        if parts is None:
            raise ValueError(f"invalid interpolation {match.group(0)!r}")
        name, op, arg = parts["name"], parts["op"], parts["arg"]
        value = env.get(name)
        if op is None:
            return value or ""
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?":
            if not value:
                raise ValueError(f"required variable {name} is unset or empty: {arg}")
            return value
        if op == "?":
            if value is None:
                raise ValueError(f"required variable {name} is unset: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        return arg if value is not None else ""  # "+"

    return _VARIABLE.sub(replace, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys, as Compose does); returns fresh containers."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if isinstance(node, str):
        return interpolate_text(node, env)
    return node


def load_compose(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> Doc:
    """The compose model with YAML anchors/merge keys resolved and variables at their defaults."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return interpolate(raw, env or {})


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def copy_instructions(text: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context (not ``--from`` stages)."""
    result = []
    for keyword, args in dockerfile_instructions(text):
        if keyword not in ("COPY", "ADD"):
            continue
        words = args.split()
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        rest = " ".join(w for w in words if not w.startswith("--"))
        paths = json.loads(rest) if rest.startswith("[") else rest.split()
        result.append((paths[:-1], paths[-1]))
    return result


def base_images(text: str) -> list[str]:
    images = []
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            images.append(words[0])
    return images


# --------------------------------------------------------------------------- helpers


def services(doc: Doc) -> dict[str, dict[str, Any]]:
    return doc.get("services") or {}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_entries(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each mount; short syntax ``SRC:DST[:MODE]`` included."""
    entries = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            entries.append((item.get("type", "volume"), item.get("source", ""), item.get("target", "")))
            continue
        parts = item.split(":")
        if len(parts) == 1:
            entries.append(("volume", "", parts[0]))  # anonymous volume
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        entries.append((kind, source, target))
    return entries


def bind_target(service: Mapping[str, Any], host_path: str) -> str | None:
    """Where the repository folder ``host_path`` (e.g. ``./dags``) is mounted in ``service``."""
    wanted = PurePosixPath(host_path)
    for kind, source, target in volume_entries(service):
        if kind == "bind" and PurePosixPath(source) == wanted:
            return target
    return None


def image_tag_problem(reference: str) -> str | None:
    """Why ``reference`` is not pinned, or None. A digest pins it; otherwise a tag other than latest."""
    if "@sha256:" in reference:
        return None
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{reference!r} has no tag (Docker would pull latest)"
    if last.split(":", 1)[1] == "latest":
        return f"{reference!r} uses the latest tag"
    return None


def service_with_image(doc: Doc, prefix: str) -> tuple[str, dict[str, Any]] | None:
    for name, service in services(doc).items():
        if str(service.get("image", "")).startswith(prefix):
            return name, service
    return None


def command_words(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return command.split() if isinstance(command, str) else list(command)


def airflow_service_names(doc: Doc) -> list[str]:
    """Services named airflow-* plus any other service built from the common Airflow image."""
    common = doc.get(COMMON) or {}
    names = []
    for name, service in services(doc).items():
        same_image = common.get("image") and service.get("image") == common.get("image")
        if name.startswith("airflow-") or same_image:
            names.append(name)
    return names


def requirement_pin(requirements: str, name: str) -> str | None:
    for line in requirements.splitlines():
        match = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.IGNORECASE)
        if match:
            return match.group(1)
    return None


# --------------------------------------------------------------------------- checks


def schema_problems(doc: Doc, schema: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append(f"{location}: {error.message}")
    return problems


def image_problems(doc: Doc, dockerfile_text: str) -> list[str]:
    problems = []
    for name, service in services(doc).items():
        if "image" not in service and "build" not in service:
            problems.append(f"service {name}: neither image nor build")
        if "image" in service and (why := image_tag_problem(str(service["image"]))):
            problems.append(f"service {name}: {why}")
    for reference in base_images(dockerfile_text):
        if why := image_tag_problem(reference):
            problems.append(f"Dockerfile FROM: {why}")
    return problems


def path_problems(doc: Doc, root: Path) -> list[str]:
    """Bind-mount sources, config files and the build context/Dockerfile exist; named volumes are declared."""
    problems = []
    declared = set((doc.get("volumes") or {}).keys())
    for name, service in services(doc).items():
        for kind, source, target in volume_entries(service):
            if kind == "bind":
                if not (root / source).exists():
                    problems.append(f"service {name}: bind source {source} (-> {target}) does not exist")
            elif kind == "volume" and source and source not in declared:
                problems.append(f"service {name}: named volume {source} is not declared under volumes:")
        build = service.get("build")
        if build is not None:
            context = root / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not context.is_dir():
                problems.append(f"service {name}: build context {context} is not a folder")
            elif not (context / dockerfile).is_file():
                problems.append(f"service {name}: Dockerfile {dockerfile} not found in {context}")
        for item in service.get("configs") or []:
            source = item if isinstance(item, str) else item.get("source")
            if source not in (doc.get("configs") or {}):
                problems.append(f"service {name}: config {source} is not declared under configs:")
    for name, config in (doc.get("configs") or {}).items():
        if "file" in config and not (root / config["file"]).exists():
            problems.append(f"config {name}: file {config['file']} does not exist")
    return problems


def dockerignore_patterns(context: Path, dockerfile: Path) -> list[str]:
    """BuildKit uses <Dockerfile>.dockerignore next to the Dockerfile, else <context>/.dockerignore."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return []


def copy_source_problems(dockerfile: Path, context: Path) -> list[str]:
    problems = []
    ignored = [p for p in dockerignore_patterns(context, dockerfile) if not p.startswith("!")]
    for sources, _destination in copy_instructions(dockerfile.read_text(encoding="utf-8")):
        for source in sources:
            matches = list(context.glob(source)) if any(c in source for c in "*?[") else [context / source]
            if not any(path.exists() for path in matches):
                problems.append(f"COPY source {source} does not exist in the build context {context}")
            for pattern in ignored:
                normalized = pattern.lstrip("/").removeprefix("**/")
                if fnmatch.fnmatch(source.rstrip("/"), normalized):
                    problems.append(f"COPY source {source} is excluded by .dockerignore pattern {pattern!r}")
    return problems


def airflow_common_problems(doc: Doc, dockerfile_text: str) -> list[str]:
    """Every Airflow service runs the common image, build, environment and mounts."""
    common = doc.get(COMMON)
    if not isinstance(common, dict):
        return [f"{COMMON} is missing"]
    problems = []
    common_env = environment(common)
    common_mounts = set(volume_entries(common))
    all_services = services(doc)
    for name, command in AIRFLOW_COMPONENTS.items():
        if name not in all_services:
            problems.append(f"service {name} is missing")
        elif command is not None and command_words(all_services[name])[:1] != [command]:
            problems.append(f"service {name}: command should be {command!r}")
    for name in airflow_service_names(doc):
        service = all_services[name]
        for key in ("image", "build", "user"):
            if key not in ALLOWED_OVERRIDES.get(name, set()) and service.get(key) != common.get(key):
                problems.append(f"service {name}: {key} differs from {COMMON}")
        env = environment(service)
        for key, value in common_env.items():
            if env.get(key) != value:
                problems.append(f"service {name}: environment {key} differs from {COMMON}")
        missing = common_mounts - set(volume_entries(service))
        for kind, source, target in sorted(missing):
            problems.append(f"service {name}: lacks the common mount {source or kind} -> {target}")
    # The image copies the project where the compose file mounts it, so a mount always replaces the
    # baked-in copy (never shadows a different path the code would then read instead).
    copied = {PurePosixPath(src[0]).as_posix(): dest for src, dest in copy_instructions(dockerfile_text)}
    for folder in ("dags", "include", "examples", "plugins"):
        target = bind_target(common, f"./{folder}")
        if target is None:
            problems.append(f"{COMMON} does not mount ./{folder}")
        elif folder in copied and PurePosixPath(copied[folder]) != PurePosixPath(target):
            problems.append(f"./{folder} is mounted at {target} but the image copies it to {copied[folder]}")
    return problems


def environment_problems(doc: Doc) -> list[str]:
    common = doc.get(COMMON) or {}
    env = environment(common)
    all_services = services(doc)
    problems = []

    def expect(key: str, check: Callable[[str], bool], why: str) -> None:
        if key not in env:
            problems.append(f"{key} is not set")
        elif not check(env[key]):
            problems.append(f"{key}={env[key]!r}: {why}")

    expect("AIRFLOW__CORE__EXECUTOR", lambda v: v == "LocalExecutor", "the stack has no Celery/Redis")
    expect(
        "AIRFLOW__CORE__AUTH_MANAGER",
        lambda v: v.endswith("simple_auth_manager.SimpleAuthManager"),
        "the local stack uses the simple auth manager",
    )
    expect("AIRFLOW__API__SECRET_KEY", bool, "must be non-empty and shared")
    expect("AIRFLOW__API_AUTH__JWT_SECRET", bool, "must be non-empty and shared")
    expect("AIRFLOW__CORE__LOAD_EXAMPLES", lambda v: v.lower() in ("false", "0"), "examples must be off")
    expect("XAC_HOME", lambda v: v == "/opt/airflow/xac", "XAC_HOME is /opt/airflow/xac")
    expect("S3_ENDPOINT_URL", lambda v: v == "http://minio:9000", "the stack's MinIO S3 API")

    dags_target = bind_target(common, "./dags")
    expect("AIRFLOW__CORE__DAGS_FOLDER", lambda v: v == dags_target, f"./dags is mounted at {dags_target}")
    plugins_target = bind_target(common, "./plugins")
    expect(
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        lambda v: v == plugins_target,
        f"./plugins is mounted at {plugins_target}",
    )
    include_target = bind_target(common, "./include")
    # dags/explainer_dags.py finds the configs at <dags folder>/../include/configs/explainers.
    if dags_target and include_target != str(PurePosixPath(dags_target).parent / "include"):
        problems.append(
            f"./include is mounted at {include_target}, not next to the DAGs folder {dags_target}"
        )
    if "XAC_HOME" in env and env["XAC_HOME"] not in {t for _, _, t in volume_entries(common)}:
        problems.append(f"XAC_HOME {env['XAC_HOME']} is not a mounted volume: generated state would be lost")

    # The execution API URL names the service that runs `airflow api-server`, on its port.
    execution = urlsplit(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""))
    api_service = all_services.get(execution.hostname or "")
    if api_service is None or command_words(api_service)[:1] != ["api-server"]:
        problems.append(f"execution API host {execution.hostname!r} is not the api-server service")
    if execution.port != 8080 or not execution.path.startswith("/execution"):
        problems.append(
            f"execution API URL {execution.geturl()!r} is not http://<api-server>:8080/execution/"
        )

    # The metadata DB URL matches the postgres service's credentials.
    db = urlsplit(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
    postgres = all_services.get(db.hostname or "")
    if postgres is None:
        problems.append(f"metadata DB host {db.hostname!r} is not a service")
    else:
        pg_env = environment(postgres)
        if (db.username, db.password, db.path.lstrip("/")) != (
            pg_env.get("POSTGRES_USER"),
            pg_env.get("POSTGRES_PASSWORD"),
            pg_env.get("POSTGRES_DB"),
        ):
            problems.append("metadata DB URL does not match the postgres service's user/password/db")

    # Object store: the endpoint is the MinIO service and every credential is MinIO's root user.
    minio = all_services.get(urlsplit(env.get("S3_ENDPOINT_URL", "")).hostname or "")
    if minio is None or not str(minio.get("image", "")).startswith("minio/minio"):
        problems.append("S3_ENDPOINT_URL does not name the MinIO service")
        minio_env: dict[str, str] = {}
    else:
        minio_env = environment(minio)
    try:
        conn = json.loads(env.get("AIRFLOW_CONN_AWS_DEFAULT", ""))
    except json.JSONDecodeError as exc:
        return [*problems, f"AIRFLOW_CONN_AWS_DEFAULT is not JSON: {exc}"]
    if conn.get("conn_type") != "aws":
        problems.append("AIRFLOW_CONN_AWS_DEFAULT: conn_type is not aws")
    if (conn.get("extra") or {}).get("endpoint_url") != env.get("S3_ENDPOINT_URL"):
        problems.append("AIRFLOW_CONN_AWS_DEFAULT: extra.endpoint_url differs from S3_ENDPOINT_URL")
    credentials = {
        "connection login": conn.get("login"),
        "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID"),
    }
    secrets = {
        "connection password": conn.get("password"),
        "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY"),
    }
    for label, value in credentials.items():
        if value != minio_env.get("MINIO_ROOT_USER"):
            problems.append(f"{label} is not MinIO's MINIO_ROOT_USER")
    for label, value in secrets.items():
        if value != minio_env.get("MINIO_ROOT_PASSWORD"):
            problems.append(f"{label} is not MinIO's MINIO_ROOT_PASSWORD")
    return problems


def config_buckets(config_dir: Path | None = None) -> dict[str, str]:
    """bucket -> first explainer config file that names it (parsed and validated by load_config)."""
    paths = discover_config_files(config_dir) if config_dir else discover_config_files()
    buckets: dict[str, str] = {}
    for path in paths:
        bucket = load_config(path).config.spec.storage.bucket
        buckets.setdefault(bucket, path.name)
    return buckets


def bucket_problems(doc: Doc, needed: Mapping[str, str]) -> list[str]:
    found = service_with_image(doc, "minio/mc")
    if found is None:
        return ["no minio/mc set-up service"]
    name, service = found
    script = " ".join(command_words(service)) + " " + " ".join(service.get("entrypoint") or [])
    problems = []
    # The script must actually loop over XAC_BUCKETS with `mc mb --with-lock`, or the list is decoration.
    if not re.search(r"\$\{?XAC_BUCKETS\}?", script):
        problems.append(f"service {name}: the script does not use XAC_BUCKETS")
    if not re.search(r"\bmc mb\b[^\n]*--with-lock", script):
        problems.append(f"service {name}: buckets are not created with `mc mb --with-lock`")
    created = set(environment(service).get("XAC_BUCKETS", "").split())
    for bucket, config in sorted(needed.items()):
        if bucket not in created:
            problems.append(f"bucket {bucket} (storage.bucket of {config}) is not created by {name}")
    return problems


def airflow_version_problems(doc: Doc, dockerfile_text: str, requirements: str, pyproject: Doc) -> list[str]:
    pin = requirement_pin(requirements, "apache-airflow")
    if pin is None:
        return ["requirements.txt has no apache-airflow== pin"]
    problems = []
    airflow_bases = [ref for ref in base_images(dockerfile_text) if ref.startswith("apache/airflow:")]
    if not airflow_bases:
        problems.append("the Dockerfile is not FROM apache/airflow:<version>")
    for reference in airflow_bases:
        match = re.fullmatch(
            r"apache/airflow:(?P<version>[^-@]+)(?:-python(?P<python>[\d.]+))?(?:@.*)?", reference
        )
        if match is None or match["version"] != pin:
            problems.append(f"FROM {reference}: Airflow version is not the requirements.txt pin {pin}")
        requires = pyproject["project"]["requires-python"]
        if match and match["python"] and match["python"] + ".0" not in SpecifierSet(requires):
            problems.append(
                f"FROM {reference}: Python {match['python']} is outside requires-python {requires}"
            )
    image = str((doc.get(COMMON) or {}).get("image", ""))
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    if not tag.startswith(f"{pin}-") and tag != pin:
        problems.append(f"the Airflow image tag {image!r} does not carry the Airflow version {pin}")
    return problems


def monitoring_problems(doc: Doc, prometheus_config: Doc) -> list[str]:
    all_services = services(doc)
    problems = []
    prometheus = service_with_image(doc, "prom/prometheus")
    if prometheus is None:
        return ["no prom/prometheus service"]
    prom_name, prom_service = prometheus
    if not any(
        kind == "bind" and PurePosixPath(source) == PurePosixPath("./deploy/prometheus.yml")
        for kind, source, _ in volume_entries(prom_service)
    ):
        problems.append(f"service {prom_name} does not mount ./deploy/prometheus.yml")
    if service_with_image(doc, "prom/pushgateway") is None:
        problems.append("no prom/pushgateway service")
    for job in prometheus_config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host = target.rsplit(":", 1)[0]
                if host != "localhost" and host not in all_services:
                    problems.append(f"scrape job {job.get('job_name')}: target {target} is not a service")
    grafana = service_with_image(doc, "grafana/grafana")
    if grafana is None:
        return [*problems, "no grafana/grafana service"]
    sources = [item["source"] if isinstance(item, dict) else item for item in grafana[1].get("configs") or []]
    datasource_urls = []
    for source in sources:
        content = ((doc.get("configs") or {}).get(source) or {}).get("content")
        if content:
            for datasource in yaml.safe_load(content).get("datasources") or []:
                datasource_urls.append(datasource.get("url", ""))
    if not datasource_urls:
        problems.append("grafana has no provisioned datasource")
    for url in datasource_urls:
        if urlsplit(url).hostname != prom_name:
            problems.append(f"grafana datasource {url} does not point at the {prom_name} service")
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def doc() -> Doc:
    return load_compose()


@pytest.fixture(scope="module")
def schema() -> Doc:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile_path(doc: Doc) -> Path:
    build = doc[COMMON]["build"]
    return REPO_ROOT / build["context"] / build["dockerfile"]


@pytest.fixture(scope="module")
def dockerfile_text(dockerfile_path: Path) -> str:
    return dockerfile_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def requirements() -> str:
    return (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pyproject() -> Doc:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def needed_buckets() -> dict[str, str]:
    return config_buckets()


# --------------------------------------------------------------------------- the real files


def test_vendored_schema_is_the_recorded_upstream_file(schema: Doc) -> None:
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", SCHEMA_README.read_text(encoding="utf-8"))
    assert recorded, "data/README.md must record the schema's sha256"
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == recorded.group(1)
    jsonschema.Draft201909Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft201909Validator


def test_compose_file_matches_the_compose_specification(doc: Doc, schema: Doc) -> None:
    assert schema_problems(doc, schema) == []


def test_compose_file_is_valid_with_variables_overridden(schema: Doc) -> None:
    # A user's .env must not turn the file invalid (e.g. a numeric UID or a different port).
    env = {"AIRFLOW_UID": "1000", "MINIO_ROOT_USER": "me", "XAC_BUNDLE_RETENTION": "1d"}
    overridden = load_compose(env=env)
    assert schema_problems(overridden, schema) == []
    assert overridden[COMMON]["user"] == "1000:0"
    assert environment_problems(overridden) == []


def test_images_are_pinned(doc: Doc, dockerfile_text: str) -> None:
    assert image_problems(doc, dockerfile_text) == []


def test_mounted_paths_and_build_inputs_exist(doc: Doc, dockerfile_path: Path) -> None:
    assert path_problems(doc, REPO_ROOT) == []
    context = REPO_ROOT / doc[COMMON]["build"]["context"]
    assert copy_instructions(dockerfile_path.read_text(encoding="utf-8")), "the Dockerfile copies nothing"
    assert copy_source_problems(dockerfile_path, context) == []


def test_airflow_services_share_the_common_definition(doc: Doc, dockerfile_text: str) -> None:
    assert airflow_common_problems(doc, dockerfile_text) == []
    # xac-samples is built from the common image too, so it is held to the same rules.
    assert "xac-samples" in airflow_service_names(doc)


def test_airflow_environment_is_consistent(doc: Doc) -> None:
    assert environment_problems(doc) == []


def test_buckets_cover_every_explainer_config(doc: Doc, needed_buckets: dict[str, str]) -> None:
    assert {"xac-explanations", "apexlogic-ai-explanations"} <= set(needed_buckets)
    assert bucket_problems(doc, needed_buckets) == []


def test_airflow_image_matches_the_pins(
    doc: Doc, dockerfile_text: str, requirements: str, pyproject: Doc
) -> None:
    assert airflow_version_problems(doc, dockerfile_text, requirements, pyproject) == []


def test_monitoring_is_wired(doc: Doc) -> None:
    prometheus_config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    assert monitoring_problems(doc, prometheus_config) == []


def compose_v2_command() -> list[str] | None:
    """``docker compose`` (or a ``docker-compose`` binary) of Compose v2, when this machine has one."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run(
                [*command, "version", "--short"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return command
    return None


def test_docker_compose_accepts_the_file(doc: Doc) -> None:
    # The schema above is what Compose validates against; the real tool also checks what a schema
    # cannot (interpolation syntax, merge keys, dependency cycles). No engine is needed for this.
    command = compose_v2_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed here")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The resolved model, not just the exit code: some wrappers of the binary always exit 0.
    resolved = yaml.safe_load(result.stdout) or {}
    assert set(resolved.get("services") or {}) == set(services(doc)), result.stderr


# --------------------------------------------------------------------------- the checks can fail


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate_text("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOME $SET", env) == "x d d  $HOME x"
    )
    assert interpolate_text("${SET:+y}${UNSET:+y}${EMPTY+z}", env) == "yz"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate_text("${UNSET:?needed}", env)
    with pytest.raises(ValueError, match="invalid"):
        interpolate_text("${1BAD}", env)


def _mutated(doc: Doc, change: Callable[[Doc], None]) -> Doc:
    broken = copy.deepcopy(doc)
    change(broken)
    return broken


def test_schema_check_rejects_an_unknown_service_key(doc: Doc, schema: Doc) -> None:
    broken = _mutated(doc, lambda d: d["services"]["postgres"].update({"imagee": "postgres:16"}))
    problems = schema_problems(broken, schema)
    assert any(p.startswith("services/postgres") and "imagee" in p for p in problems), problems
    broken = _mutated(doc, lambda d: d["services"]["minio"].update({"ports": "9000:9000"}))
    assert any(p.startswith("services/minio/ports") for p in schema_problems(broken, schema))


def test_image_check_rejects_latest_and_untagged(doc: Doc, dockerfile_text: str) -> None:
    broken = _mutated(doc, lambda d: d["services"]["grafana"].update({"image": "grafana/grafana:latest"}))
    assert any("grafana" in p and "latest" in p for p in image_problems(broken, dockerfile_text))
    broken = _mutated(doc, lambda d: d["services"]["prometheus"].update({"image": "prom/prometheus"}))
    assert any("no tag" in p for p in image_problems(broken, dockerfile_text))
    floating = re.sub(r"^FROM \S+", "FROM apache/airflow:latest", dockerfile_text, count=1, flags=re.M)
    assert any("Dockerfile FROM" in p for p in image_problems(doc, floating))


def test_path_check_rejects_missing_sources(doc: Doc, tmp_path: Path) -> None:
    broken = _mutated(doc, lambda d: d["services"]["prometheus"]["volumes"].append("./no-such-dir:/x"))
    assert any("./no-such-dir" in p for p in path_problems(broken, REPO_ROOT))
    broken = _mutated(doc, lambda d: d["services"]["grafana"]["volumes"].append("undeclared:/y"))
    assert any("undeclared" in p for p in path_problems(broken, REPO_ROOT))
    # A Dockerfile copying something absent, or something the ignore file drops, is reported.
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY missing.txt present.txt /a/\n")
    (tmp_path / "present.txt").write_text("x")
    (tmp_path / "x.Dockerfile.dockerignore").write_text("present.txt\n")
    problems = copy_source_problems(dockerfile, tmp_path)
    assert any("missing.txt does not exist" in p for p in problems), problems
    assert any("present.txt is excluded" in p for p in problems), problems


def test_common_check_rejects_a_diverging_airflow_service(doc: Doc, dockerfile_text: str) -> None:
    broken = _mutated(
        doc, lambda d: d["services"]["airflow-triggerer"].update({"image": "apache/airflow:3.3.2"})
    )
    assert any("airflow-triggerer: image" in p for p in airflow_common_problems(broken, dockerfile_text))
    broken = _mutated(
        doc,
        lambda d: d["services"]["airflow-scheduler"]["environment"].update({"XAC_HOME": "/tmp/elsewhere"}),
    )
    assert any(
        "airflow-scheduler: environment XAC_HOME" in p
        for p in airflow_common_problems(broken, dockerfile_text)
    )
    broken = _mutated(doc, lambda d: d["services"]["airflow-dag-processor"]["volumes"].pop(0))
    assert any("airflow-dag-processor: lacks" in p for p in airflow_common_problems(broken, dockerfile_text))
    moved = dockerfile_text.replace(
        "COPY --chown=airflow:0 include /opt/airflow/include", "COPY include /srv/include"
    )
    assert any("./include is mounted" in p for p in airflow_common_problems(doc, moved))


def test_environment_check_rejects_inconsistencies(doc: Doc) -> None:
    def set_env(key: str, value: str) -> Doc:
        return _mutated(doc, lambda d: d[COMMON]["environment"].update({key: value}))

    assert any(
        "DAGS_FOLDER" in p for p in environment_problems(set_env("AIRFLOW__CORE__DAGS_FOLDER", "/dags"))
    )
    assert any(
        "EXECUTOR" in p for p in environment_problems(set_env("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor"))
    )
    assert any(
        "LOAD_EXAMPLES" in p for p in environment_problems(set_env("AIRFLOW__CORE__LOAD_EXAMPLES", "true"))
    )
    scheduler_url = set_env(
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://airflow-scheduler:8080/execution/"
    )
    assert any("execution API host" in p for p in environment_problems(scheduler_url))
    other_user = _mutated(
        doc, lambda d: d["services"]["minio"]["environment"].update({"MINIO_ROOT_USER": "x"})
    )
    assert any("MINIO_ROOT_USER" in p for p in environment_problems(other_user))
    other_db = _mutated(doc, lambda d: d["services"]["postgres"]["environment"].update({"POSTGRES_DB": "x"}))
    assert any("metadata DB URL" in p for p in environment_problems(other_db))
    conn = json.loads(doc[COMMON]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])
    conn["extra"]["endpoint_url"] = "http://localhost:9000"
    problems = environment_problems(set_env("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn)))
    assert any("endpoint_url" in p for p in problems)


def test_bucket_check_names_a_missing_bucket(doc: Doc, needed_buckets: dict[str, str]) -> None:
    broken = _mutated(
        doc, lambda d: d["services"]["minio-setup"]["environment"].update({"XAC_BUCKETS": "xac-explanations"})
    )
    problems = bucket_problems(broken, needed_buckets)
    assert problems == [
        "bucket apexlogic-ai-explanations (storage.bucket of image-classifier-shap-explainer.yaml)"
        " is not created by minio-setup"
    ]
    unlocked = _mutated(
        doc,
        lambda d: d["services"]["minio-setup"].update(
            {"command": [c.replace("--with-lock", "") for c in d["services"]["minio-setup"]["command"]]}
        ),
    )
    assert any("--with-lock" in p for p in bucket_problems(unlocked, needed_buckets))


def test_config_buckets_come_from_the_validated_configs(tmp_path: Path) -> None:
    source = REPO_ROOT / "include" / "configs" / "explainers" / "multimodal-digits-ig.yaml"
    text = source.read_text(encoding="utf-8").replace("bucket: xac-explanations", "bucket: other-bucket")
    (tmp_path / "copy.yaml").write_text(text, encoding="utf-8")
    assert config_buckets(tmp_path) == {"other-bucket": "copy.yaml"}


def test_version_check_rejects_a_mismatched_base_image(
    doc: Doc, dockerfile_text: str, requirements: str, pyproject: Doc
) -> None:
    pin = requirement_pin(requirements, "apache-airflow")
    assert pin
    other = dockerfile_text.replace(f"apache/airflow:{pin}-", "apache/airflow:3.0.0-", 1)
    assert any(
        "not the requirements.txt pin" in p
        for p in airflow_version_problems(doc, other, requirements, pyproject)
    )
    py310 = dockerfile_text.replace("-python3.11", "-python3.10", 1)
    assert any("requires-python" in p for p in airflow_version_problems(doc, py310, requirements, pyproject))
    renamed = _mutated(doc, lambda d: d[COMMON].update({"image": "xac-airflow:dev"}))
    assert any(
        "image tag" in p for p in airflow_version_problems(renamed, dockerfile_text, requirements, pyproject)
    )


def test_monitoring_check_rejects_unknown_targets(doc: Doc) -> None:
    config = {"scrape_configs": [{"job_name": "x", "static_configs": [{"targets": ["nowhere:1234"]}]}]}
    assert any("nowhere:1234" in p for p in monitoring_problems(doc, config))


# =========================================================================== the CeleryExecutor variant
#
# docker-compose.celery.yaml is an override of docker-compose.yaml (`-f docker-compose.yaml -f
# docker-compose.celery.yaml`): it is merged onto the base file here the way Compose merges override
# files and resolves `extends`, then held to what a shared deployment needs.

CELERY_FILE = REPO_ROOT / "docker-compose.celery.yaml"
CELERY_WORKER = "airflow-worker"
# Keys that Compose replaces instead of merging when an override sets them.
_REPLACED = {"command", "entrypoint"}


def product_connection_ids() -> set[str]:
    """Every Airflow connection the tasks read: the ``*_CONN_ID`` constants of
    include.adapters.connections."""
    from include.adapters import connections

    return {
        value
        for name, value in vars(connections).items()
        if name.endswith("_CONN_ID") and isinstance(value, str)
    }


def conn_env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _depends_on(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {name: {"condition": "service_started"} for name in value}
    return dict(value or {})


def merge_service(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's merge of one service: mappings key by key (environment, depends_on, healthcheck),
    mounts by target path, command/entrypoint replaced, other sequences appended, scalars replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key == "extends":
            continue
        if key in _REPLACED or key not in merged:
            merged[key] = copy.deepcopy(value)
        elif key == "environment":
            merged[key] = {**environment(merged), **environment(override)}
        elif key == "depends_on":
            merged[key] = {**_depends_on(merged[key]), **_depends_on(value)}
        elif key == "volumes":
            by_target = {
                entry[2]: item for item, entry in zip(merged[key], volume_entries(merged), strict=True)
            }
            for item, entry in zip(value, volume_entries(override), strict=True):
                by_target[entry[2]] = item
            merged[key] = list(by_target.values())
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        elif isinstance(value, list) and isinstance(merged[key], list):
            merged[key] = merged[key] + [item for item in value if item not in merged[key]]
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_extends(
    service: Mapping[str, Any], doc: Doc, root: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """The service with its ``extends`` applied: the named service of the named file (read on its own,
    as Compose does) with this service's keys merged over it."""
    extends = service.get("extends")
    if extends is None:
        return dict(service)
    extends = {"service": extends} if isinstance(extends, str) else extends
    if "file" in extends:
        path = root / extends["file"]
        if not path.is_file():
            raise FileNotFoundError(f"extends: {extends['file']} does not exist")
        source = load_compose(path, env)
    else:
        source = doc
    base = services(source).get(extends["service"])
    if base is None:
        raise KeyError(f"extends: no service {extends['service']!r} in {extends.get('file', 'this file')}")
    return merge_service(resolve_extends(base, source, root, env), service)


def merge_compose(base: Doc, override: Doc, root: Path, env: Mapping[str, str]) -> Doc:
    """``docker compose -f base -f override``: top-level mappings merged, services merged one by one."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "services":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    all_services = merged.setdefault("services", {})
    for name, service in services(override).items():
        service = resolve_extends(service, override, root, env)
        all_services[name] = merge_service(all_services[name], service) if name in all_services else service
    return merged


def load_celery_compose(env: Mapping[str, str], override_path: Path = CELERY_FILE) -> Doc:
    return merge_compose(
        load_compose(COMPOSE_FILE, env), load_compose(override_path, env), override_path.parent, env
    )


def parse_connection(value: str) -> dict[str, Any]:
    """An AIRFLOW_CONN_* value in JSON form (the URI form is accepted too, as Airflow does)."""
    if value.lstrip().startswith("{"):
        return dict(json.loads(value))
    parts = urlsplit(value)
    return {
        "conn_type": parts.scheme.replace("-", "_"),
        "host": parts.hostname,
        "port": parts.port,
        "login": parts.username,
        "password": parts.password,
        "schema": parts.path.lstrip("/"),
    }


def _postgres_service(doc: Doc, host: str | None) -> dict[str, str] | None:
    service = services(doc).get(host or "")
    if service is None or not str(service.get("image", "")).startswith("postgres"):
        return None
    return environment(service)


def created_databases(doc: Doc) -> set[str]:
    """Databases a one-shot service creates with ``CREATE DATABASE $${VAR}`` (VAR from its environment)."""
    names = set()
    for service in services(doc).values():
        script = " ".join(command_words(service))
        for var in re.findall(r"CREATE DATABASE \"?\$\{?(\w+)\}?", script):
            if environment(service).get(var):
                names.add(environment(service)[var])
    return names


def celery_environment_problems(doc: Doc) -> list[str]:
    """Every Airflow service runs the CeleryExecutor with the same broker, result backend and shared mode."""
    all_services = services(doc)
    names = airflow_service_names(doc)
    if "airflow-scheduler" not in names:
        return ["no airflow-scheduler service"]
    reference = environment(all_services["airflow-scheduler"])
    problems = []
    for name in names:
        env = environment(all_services[name])
        for key, value in reference.items():
            if env.get(key) != value:
                problems.append(f"service {name}: environment {key} differs from airflow-scheduler's")
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            problems.append(f"service {name}: AIRFLOW__CORE__EXECUTOR is not CeleryExecutor")
        if env.get("XAC_DEPLOYMENT") != "shared":
            problems.append(f"service {name}: XAC_DEPLOYMENT is not shared")
    broker = urlsplit(reference.get("AIRFLOW__CELERY__BROKER_URL", ""))
    redis = all_services.get(broker.hostname or "")
    if broker.scheme != "redis" or redis is None or not str(redis.get("image", "")).startswith("redis:"):
        problems.append(f"AIRFLOW__CELERY__BROKER_URL {broker.geturl()!r} does not name the redis service")
    elif (broker.port or 6379) != 6379:
        problems.append("AIRFLOW__CELERY__BROKER_URL is not on Redis's port 6379")
    backend = reference.get("AIRFLOW__CELERY__RESULT_BACKEND", "")
    metadata = urlsplit(reference.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
    result = urlsplit(backend.removeprefix("db+"))
    if not backend.startswith("db+postgresql"):
        problems.append("AIRFLOW__CELERY__RESULT_BACKEND is not a db+postgresql URL")
    elif (result.hostname, result.username, result.password, result.path) != (
        metadata.hostname,
        metadata.username,
        metadata.password,
        metadata.path,
    ):
        problems.append("AIRFLOW__CELERY__RESULT_BACKEND is not the metadata database")
    return problems


def connection_problems(doc: Doc, conn_ids: set[str]) -> list[str]:
    """Every connection the tasks read is defined in every Airflow service's environment, and usable."""
    problems = []
    databases = created_databases(doc)
    for name in airflow_service_names(doc):
        env = environment(services(doc)[name])
        for conn_id in sorted(conn_ids):
            key = conn_env_name(conn_id)
            if key not in env:
                problems.append(f"service {name}: no {key}")
                continue
            try:
                conn = parse_connection(env[key])
            except (ValueError, TypeError) as exc:
                problems.append(f"service {name}: {key} is not a connection: {exc}")
                continue
            if conn_id == "aws_default":
                if conn.get("conn_type") != "aws":
                    problems.append(f"service {name}: {key} is not an aws connection")
            elif conn_id == "xac_cost_store":
                pg = _postgres_service(doc, conn.get("host"))
                if conn.get("conn_type") != "postgres" or pg is None:
                    problems.append(
                        f"service {name}: {key} is not a postgres connection to a postgres service"
                    )
                elif (conn.get("login"), conn.get("password")) != (
                    pg.get("POSTGRES_USER"),
                    pg.get("POSTGRES_PASSWORD"),
                ):
                    problems.append(f"service {name}: {key} does not use the postgres service's credentials")
                elif conn.get("schema") not in databases:
                    problems.append(
                        f"service {name}: {key} names database {conn.get('schema')!r}, which nothing creates"
                    )
            elif not conn.get("password"):
                problems.append(f"service {name}: {key} has no password (the secret it carries)")
    return problems


def celery_worker_problems(doc: Doc) -> list[str]:
    """The worker: the common image and mounts, `celery worker`, scalable, no shared XAC_HOME volume."""
    all_services = services(doc)
    worker = all_services.get(CELERY_WORKER)
    if worker is None:
        return [f"no {CELERY_WORKER} service"]
    common = doc.get(COMMON) or {}
    problems = []
    if command_words(worker)[:2] != ["celery", "worker"]:
        problems.append(f"{CELERY_WORKER}: command is not `celery worker`")
    for key in ("image", "build", "user"):
        if worker.get(key) != common.get(key):
            problems.append(f"{CELERY_WORKER}: {key} differs from {COMMON}")
    xac_home = environment(worker).get("XAC_HOME", "")
    mounts = {target: (kind, source) for kind, source, target in volume_entries(worker)}
    for kind, source, target in volume_entries(common):
        if target != xac_home and mounts.get(target) != (kind, source):
            problems.append(f"{CELERY_WORKER}: lacks the common mount {source or kind} -> {target}")
    for target, (kind, source) in mounts.items():
        if target == xac_home or (xac_home and PurePosixPath(xac_home).is_relative_to(target)):
            if kind == "bind" or (kind == "volume" and source):
                problems.append(f"{CELERY_WORKER}: XAC_HOME {xac_home} is on the shared {kind} {source}")
    # --scale airflow-worker=N needs replicas that can coexist.
    if "container_name" in worker:
        problems.append(f"{CELERY_WORKER}: container_name prevents --scale")
    if any(":" in str(port) or isinstance(port, dict) for port in worker.get("ports") or []):
        problems.append(f"{CELERY_WORKER}: a published host port prevents --scale")
    broker = urlsplit(environment(worker).get("AIRFLOW__CELERY__BROKER_URL", "")).hostname
    if _depends_on(worker.get("depends_on")).get(broker or "", {}).get("condition") != "service_healthy":
        problems.append(f"{CELERY_WORKER}: does not wait for the broker {broker!r} to be healthy")
    if "inspect ping" not in " ".join((worker.get("healthcheck") or {}).get("test") or []):
        problems.append(f"{CELERY_WORKER}: no `celery inspect ping` healthcheck")
    return problems


def documented_env_snippet(text: str) -> str:
    """The shell commands in the override file's header that write the demo secrets into .env."""
    lines = [line.removeprefix("#") for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if "openssl genpkey" in line)
    end = next(i for i, line in enumerate(lines) if i > start and ">> .env" in line)
    return "\n".join(line.removeprefix("   ") for line in lines[start : end + 1])


def read_dotenv(path: Path) -> dict[str, str]:
    """Unquoted NAME=value lines, kept literally (as Compose reads them: a ``\\n`` stays two characters)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


@pytest.fixture(scope="module")
def demo_env() -> dict[str, str]:
    """What the documented commands put into .env: a fresh Ed25519 pair (one line each) and a salt."""
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return {
        "XAC_SIGNING_KEY_PEM": private.replace("\n", "\\n"),
        "XAC_KEYRING_PEM": public.replace("\n", "\\n"),
        "XAC_PROVENANCE_SALT": secrets.token_hex(32),
    }


@pytest.fixture(scope="module")
def celery_doc(demo_env: dict[str, str]) -> Doc:
    return load_celery_compose(demo_env)


@pytest.fixture(scope="module")
def conn_ids() -> set[str]:
    ids = product_connection_ids()
    assert {"aws_default", "xac_signing", "xac_provenance_salt", "xac_keyring", "xac_cost_store"} <= ids
    return ids


# --------------------------------------------------------------------------- the real override


def test_celery_override_and_merged_file_match_the_compose_specification(
    celery_doc: Doc, schema: Doc, demo_env: dict[str, str]
) -> None:
    # The override alone (as Compose validates each file) and the merged model.
    assert schema_problems(load_compose(CELERY_FILE, demo_env), schema) == []
    assert schema_problems(celery_doc, schema) == []
    broken = _mutated(celery_doc, lambda d: d["services"]["redis"].update({"expose": "6379"}))
    assert any(p.startswith("services/redis/expose") for p in schema_problems(broken, schema))


def test_celery_variant_leaves_the_default_stack_alone(doc: Doc, celery_doc: Doc) -> None:
    # The default is still the LocalExecutor stack without Redis or workers.
    assert environment_problems(doc) == []
    assert "redis" not in services(doc) and CELERY_WORKER not in services(doc)
    assert set(services(doc)) < set(services(celery_doc))


def test_celery_images_are_pinned_and_paths_exist(celery_doc: Doc, dockerfile_text: str) -> None:
    assert image_problems(celery_doc, dockerfile_text) == []
    assert path_problems(celery_doc, REPO_ROOT) == []


def test_celery_variant_sets_executor_broker_and_result_backend(celery_doc: Doc) -> None:
    assert celery_environment_problems(celery_doc) == []
    # Everything else of the common environment still holds for the merged services (S3, execution
    # API, metadata DB, ...): the base file's check, run on the worker's environment and mounts.
    worker = services(celery_doc)[CELERY_WORKER]
    as_common = {**celery_doc, COMMON: {**celery_doc[COMMON], "environment": worker["environment"]}}
    problems = environment_problems(as_common)
    assert problems == ["AIRFLOW__CORE__EXECUTOR='CeleryExecutor': the stack has no Celery/Redis"], problems


def test_celery_variant_provides_every_connection_the_tasks_read(celery_doc: Doc, conn_ids: set[str]) -> None:
    assert connection_problems(celery_doc, conn_ids) == []
    assert CELERY_WORKER in airflow_service_names(celery_doc)


def test_celery_worker_is_scalable_and_keeps_no_shared_state(celery_doc: Doc) -> None:
    assert celery_worker_problems(celery_doc) == []


def test_celery_connections_carry_a_usable_key_pair(celery_doc: Doc) -> None:
    # The .env values arrive in the connections intact: the private key signs, the keyring trusts it.
    from include.compliance.keys import keyring_from_pem_text, load_signing_key_pem

    env = environment(services(celery_doc)[CELERY_WORKER])
    signer = load_signing_key_pem(parse_connection(env["AIRFLOW_CONN_XAC_SIGNING"])["password"])
    keyring = keyring_from_pem_text(parse_connection(env["AIRFLOW_CONN_XAC_KEYRING"])["password"], source="x")
    assert keyring.keyids == [signer.public_key.keyid]


def test_documented_env_commands_produce_usable_secrets(tmp_path: Path) -> None:
    if shutil.which("openssl") is None or shutil.which("awk") is None or shutil.which("bash") is None:
        pytest.skip("openssl, awk or bash is not installed here")
    from include.compliance.keys import keyring_from_pem_text, load_signing_key_pem

    snippet = documented_env_snippet(CELERY_FILE.read_text(encoding="utf-8"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    env = read_dotenv(tmp_path / ".env")
    assert set(env) == {"XAC_SIGNING_KEY_PEM", "XAC_KEYRING_PEM", "XAC_PROVENANCE_SALT"}
    worker = environment(services(load_celery_compose(env))[CELERY_WORKER])
    signer = load_signing_key_pem(parse_connection(worker["AIRFLOW_CONN_XAC_SIGNING"])["password"])
    keyring = keyring_from_pem_text(
        parse_connection(worker["AIRFLOW_CONN_XAC_KEYRING"])["password"], source="x"
    )
    assert keyring.keyids == [signer.public_key.keyid]
    assert len(parse_connection(worker["AIRFLOW_CONN_XAC_PROVENANCE_SALT"])["password"]) == 64


def test_docker_compose_merges_the_celery_override_the_same_way(
    celery_doc: Doc, demo_env: dict[str, str], tmp_path: Path
) -> None:
    # The real tool's merge (override + extends) against the emulation the checks above run on.
    command = compose_v2_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed here")
    env_file = tmp_path / "celery.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in demo_env.items()), encoding="utf-8")
    result = subprocess.run(
        [
            *command,
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(CELERY_FILE),
            "config",
            "--format",
            "json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout or "{}")
    assert set(resolved.get("services") or {}) == set(services(celery_doc)), result.stderr
    for name, service in services(celery_doc).items():
        real = resolved["services"][name]
        assert environment(real) == environment(service), name
        assert {v["target"]: v["type"] for v in real.get("volumes") or []} == {
            target: kind for kind, _, target in volume_entries(service)
        }, name
        assert set(_depends_on(real.get("depends_on"))) == set(_depends_on(service.get("depends_on"))), name
    worker = resolved["services"][CELERY_WORKER]
    assert worker["command"] == ["celery", "worker"]


# --------------------------------------------------------------------------- the Celery checks can fail


def test_celery_override_requires_its_secrets() -> None:
    with pytest.raises(ValueError, match="XAC_SIGNING_KEY_PEM"):
        load_celery_compose({"XAC_KEYRING_PEM": "x", "XAC_PROVENANCE_SALT": "x"})


def test_merge_follows_compose_rules(tmp_path: Path) -> None:
    base = {
        "image": "a:1",
        "command": ["x", "y"],
        "environment": ["A=1", "B=2"],
        "depends_on": ["db"],
        "volumes": ["named:/data", "./src:/src"],
        "healthcheck": {"test": ["CMD", "a"], "retries": 3},
    }
    override = {
        "command": "z",
        "environment": {"B": "3", "C": "4"},
        "depends_on": {"q": {"condition": "x"}},
        "volumes": [{"type": "tmpfs", "target": "/data"}],
        "healthcheck": {"test": ["CMD", "b"]},
    }
    merged = merge_service(base, override)
    assert merged["command"] == "z"
    assert merged["environment"] == {"A": "1", "B": "3", "C": "4"}
    assert set(merged["depends_on"]) == {"db", "q"}
    assert {target: kind for kind, _, target in volume_entries(merged)} == {"/data": "tmpfs", "/src": "bind"}
    assert merged["healthcheck"] == {"test": ["CMD", "b"], "retries": 3}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"services": {"s": base}}))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        resolve_extends({"extends": {"file": "missing.yaml", "service": "s"}}, {}, tmp_path, {})
    with pytest.raises(KeyError, match="nope"):
        resolve_extends({"extends": {"file": "base.yaml", "service": "nope"}}, {}, tmp_path, {})
    assert resolve_extends(
        {"extends": {"file": "base.yaml", "service": "s"}, "command": "w"}, {}, tmp_path, {}
    )["environment"] == ["A=1", "B=2"]


def test_celery_environment_check_rejects_inconsistencies(celery_doc: Doc) -> None:
    def set_env(service: str, key: str, value: str) -> Doc:
        return _mutated(celery_doc, lambda d: d["services"][service]["environment"].update({key: value}))

    local = set_env(CELERY_WORKER, "AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    assert any("airflow-worker: AIRFLOW__CORE__EXECUTOR" in p for p in celery_environment_problems(local))
    embedded = set_env("airflow-triggerer", "XAC_DEPLOYMENT", "embedded")
    assert any("airflow-triggerer: XAC_DEPLOYMENT" in p for p in celery_environment_problems(embedded))
    dropped = _mutated(
        celery_doc, lambda d: d["services"][CELERY_WORKER]["environment"].pop("XAC_DEPLOYMENT")
    )
    assert any(
        "airflow-worker: environment XAC_DEPLOYMENT" in p for p in celery_environment_problems(dropped)
    )
    for service in airflow_service_names(celery_doc):
        celery_doc_broker = set_env(service, "AIRFLOW__CELERY__BROKER_URL", "redis://nowhere:6379/0")
        assert celery_environment_problems(celery_doc_broker), service
    no_redis = _mutated(celery_doc, lambda d: d["services"].pop("redis"))
    assert any("BROKER_URL" in p for p in celery_environment_problems(no_redis))
    everywhere = _mutated(
        celery_doc,
        lambda d: [
            d["services"][s]["environment"].update({"AIRFLOW__CELERY__RESULT_BACKEND": "rpc://"})
            for s in airflow_service_names(d)
        ],
    )
    assert "AIRFLOW__CELERY__RESULT_BACKEND is not a db+postgresql URL" in celery_environment_problems(
        everywhere
    )
    other_db = _mutated(
        celery_doc,
        lambda d: [
            d["services"][s]["environment"].update(
                {"AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql://airflow:airflow@postgres/other"}
            )
            for s in airflow_service_names(d)
        ],
    )
    assert "AIRFLOW__CELERY__RESULT_BACKEND is not the metadata database" in celery_environment_problems(
        other_db
    )


def test_connection_check_names_a_missing_or_wrong_connection(celery_doc: Doc, conn_ids: set[str]) -> None:
    def without(service: str, key: str) -> Doc:
        return _mutated(celery_doc, lambda d: d["services"][service]["environment"].pop(key))

    for conn_id in sorted(conn_ids):
        problems = connection_problems(without(CELERY_WORKER, conn_env_name(conn_id)), conn_ids)
        assert f"service airflow-worker: no {conn_env_name(conn_id)}" in problems
    # A connection the product starts reading is required too.
    assert "service airflow-worker: no AIRFLOW_CONN_XAC_NEW" in connection_problems(
        celery_doc, {*conn_ids, "xac_new"}
    )

    def set_conn(conn_id: str, value: str) -> Doc:
        key = conn_env_name(conn_id)
        return _mutated(
            celery_doc, lambda d: d["services"]["airflow-apiserver"]["environment"].update({key: value})
        )

    assert any(
        "not a connection" in p for p in connection_problems(set_conn("xac_signing", "{broken"), conn_ids)
    )
    empty = set_conn("xac_provenance_salt", '{"conn_type": "generic", "password": ""}')
    assert any(
        "AIRFLOW_CONN_XAC_PROVENANCE_SALT has no password" in p for p in connection_problems(empty, conn_ids)
    )
    not_aws = set_conn("aws_default", '{"conn_type": "generic"}')
    assert any("not an aws connection" in p for p in connection_problems(not_aws, conn_ids))
    elsewhere = set_conn("xac_cost_store", "postgres://airflow:airflow@db.example.com:5432/xac_costs")
    assert any("postgres service" in p for p in connection_problems(elsewhere, conn_ids))
    wrong_pw = set_conn("xac_cost_store", "postgres://airflow:nope@postgres:5432/xac_costs")
    assert any("credentials" in p for p in connection_problems(wrong_pw, conn_ids))
    no_db = set_conn("xac_cost_store", "postgres://airflow:airflow@postgres:5432/never_created")
    assert any("never_created" in p for p in connection_problems(no_db, conn_ids))


def test_worker_check_rejects_shared_state_and_unscalable_workers(celery_doc: Doc) -> None:
    def change_worker(change: Callable[[dict[str, Any]], None]) -> list[str]:
        return celery_worker_problems(_mutated(celery_doc, lambda d: change(d["services"][CELERY_WORKER])))

    def mount(volume: str) -> Callable[[dict[str, Any]], None]:
        def change(worker: dict[str, Any]) -> None:
            worker["volumes"] = [v for v in worker["volumes"] if not isinstance(v, dict)] + [volume]

        return change

    shared = change_worker(mount("xac-home:/opt/airflow/xac"))
    assert any("XAC_HOME /opt/airflow/xac is on the shared volume xac-home" in p for p in shared), shared
    bound = change_worker(mount("./.xac:/opt/airflow/xac"))
    assert any("is on the shared bind ./.xac" in p for p in bound), bound
    parent = change_worker(mount("state:/opt/airflow"))
    assert any("shared volume state" in p for p in parent), parent
    assert change_worker(mount("/opt/airflow/xac")) == []  # an anonymous volume is the worker's own
    assert any("command" in p for p in change_worker(lambda w: w.update({"command": "scheduler"})))
    assert any("image" in p for p in change_worker(lambda w: w.update({"image": "apache/airflow:3.3.2"})))
    assert any("container_name" in p for p in change_worker(lambda w: w.update({"container_name": "w"})))
    assert any("host port" in p for p in change_worker(lambda w: w.update({"ports": ["8793:8793"]})))
    assert any("broker" in p for p in change_worker(lambda w: w["depends_on"].pop("redis")))
    assert any(
        "healthcheck" in p for p in change_worker(lambda w: w.update({"healthcheck": {"test": ["NONE"]}}))
    )
    lost = change_worker(lambda w: w.update({"volumes": [v for v in w["volumes"] if "./dags" not in str(v)]}))
    assert any("lacks the common mount ./dags" in p for p in lost), lost
    assert celery_worker_problems(_mutated(celery_doc, lambda d: d["services"].pop(CELERY_WORKER))) == [
        "no airflow-worker service"
    ]


def test_celery_workers_share_the_feature_store_and_none_of_its_state(celery_doc: Doc) -> None:
    """The Celery variant's feature store lives in PostgreSQL (written by xac-samples before any worker
    starts); the workers see only its feature_store.yaml, read-only, through a config volume."""
    all_services = services(celery_doc)
    worker, samples = all_services[CELERY_WORKER], all_services["xac-samples"]
    repo = environment(worker)["XAC_FEATURE_REPO"]
    assert environment(samples)["XAC_FEATURE_REPO"] == repo
    shared_db = urlsplit(environment(samples)["XAC_SAMPLES_FEATURE_DB"])
    assert shared_db.hostname == "postgres" and shared_db.path == "/xac_features"
    worker_mounts = {target: (kind, source) for kind, source, target in volume_entries(worker)}
    sample_mounts = {target: (kind, source) for kind, source, target in volume_entries(samples)}
    assert worker_mounts[repo] == sample_mounts[repo] == ("volume", "xac-feature-repo")
    assert any(str(v).endswith(f"{repo}:ro") for v in worker["volumes"])
    assert (
        _depends_on(worker.get("depends_on"))["xac-samples"]["condition"] == "service_completed_successfully"
    )
