"""Load ExplainerConfiguration files with errors that name file, line and field.

Every problem is one line, ``PATH:LINE: field.path: message``, the format editors and CI log
viewers turn into links. The happy path parses with libyaml (fast: the DAG factory loads every
config on each parse); line numbers are only computed when there is something to report.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from include.configuration.schema import ExplainerConfiguration, Location, semantic_problems
from include.paths import CONFIGS_DIR

try:  # libyaml is much faster; fall back to the pure-Python loader where it is missing
    _FastLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _FastLoader = yaml.SafeLoader

EXPLAINER_CONFIGS_DIR = CONFIGS_DIR / "explainers"
MODEL_CATALOGUE_PATH = CONFIGS_DIR / "models.yaml"
POLICY_PATH = CONFIGS_DIR / "policy.yaml"


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class ConfigError(Exception):
    """A configuration file was refused; ``problems`` holds one entry per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedConfig:
    """A valid configuration with the policy's defaults applied."""

    path: Path
    config: ExplainerConfiguration
    sha256: str
    text: str
    defaults_applied: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.config.metadata.name


def format_location(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _line_index(text: str) -> dict[Location, int]:
    """Map every key path in the YAML document to its 1-based line."""
    index: dict[Location, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, loc: Location) -> None:
        index.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
                index[(*loc, key)] = key_node.start_mark.line + 1
                walk(value_node, (*loc, key))
                # the value's own line would otherwise overwrite the key's line
                index[(*loc, key)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return index


def _line_for(index: dict[Location, int], loc: Location) -> int:
    """The line of ``loc`` or, when it is absent from the file, of its closest present parent."""
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in index:
            return index[loc[:cut]]
    return 1


@lru_cache(maxsize=1)
def _catalogue_cached(path: Path, mtime: float) -> dict[str, dict[str, Any]]:
    data = yaml.load(path.read_text(), Loader=_FastLoader) or {}
    return dict(data.get("models") or {})


def model_catalogue_path() -> Path:
    """The model catalogue: ``XAC_MODEL_CATALOGUE`` (a team's own models.yaml) or the project's."""
    configured = os.environ.get("XAC_MODEL_CATALOGUE")
    return Path(configured).expanduser() if configured else MODEL_CATALOGUE_PATH


def model_catalogue(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The models a config may name (``include/configs/models.yaml`` or ``XAC_MODEL_CATALOGUE``)."""
    path = path or model_catalogue_path()
    return _catalogue_cached(path, path.stat().st_mtime)


@lru_cache(maxsize=1)
def _policy_cached(path: Path, mtime: float) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_FastLoader) or {}


def policy(path: Path = POLICY_PATH) -> dict[str, Any]:
    return _policy_cached(path, path.stat().st_mtime)


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            return None
        node = node[part]
    return node


def _apply_policy(data: dict[str, Any], pol: dict[str, Any]) -> tuple[list[tuple[Location, str]], list[str]]:
    """Fill namespace defaults into ``data`` (in place); return (problems, defaults applied)."""
    namespace = _get(data, "metadata.namespace")
    defaults = (pol.get("namespaceDefaults") or {}).get(namespace) or {}
    applied: list[str] = []
    spec = data.get("spec")
    if isinstance(spec, dict):
        for key, value in defaults.items():
            if spec.get(key) is None:
                spec[key] = value
                applied.append(f"spec.{key}")
    problems: list[tuple[Location, str]] = []
    for required in pol.get("required") or []:
        if _get(data, required) is None:
            where = f"namespace {namespace!r}" if namespace else "configs without a namespace"
            problems.append(
                (
                    tuple(required.split(".")),
                    f"required by policy ({POLICY_PATH.name}) and no default is declared for {where}",
                )
            )
    return problems, applied


def _problems_from_validation(exc: ValidationError) -> list[tuple[Location, str]]:
    out: list[tuple[Location, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic names union branches in the location ("int", "constrained-int" ...): drop them
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        out.append((loc, message))
    return out


_UNION_TAGS = {"str", "int", "float", "constrained-int", "constrained-str", "none"}


MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_DEPTH = 32


def _event_problem(text: str) -> tuple[int, str] | None:
    """(line, problem) of the first YAML alias or duplicate mapping key, from the parser's events
    (nothing is constructed, so nothing is expanded); None when there is neither."""
    # One frame per open collection: [is_mapping, keys seen, next node is a key].
    frames: list[list[Any]] = []
    try:
        for event in yaml.parse(text, Loader=_FastLoader):
            if isinstance(event, yaml.AliasEvent):
                # A config needs no anchors; aliases expand exponentially (a 1.5 KB file took 1.1 GB).
                return event.start_mark.line + 1, "YAML aliases (*name) are not allowed in a config"
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frames.pop()
                continue
            if not isinstance(event, yaml.ScalarEvent | yaml.MappingStartEvent | yaml.SequenceStartEvent):
                continue
            if frames and frames[-1][0]:
                frame = frames[-1]
                if frame[2] and isinstance(event, yaml.ScalarEvent):
                    if event.value in frame[1]:
                        # YAML keeps the last silently: a reviewer reads one value, Airflow runs another
                        return (
                            event.start_mark.line + 1,
                            f"duplicate key {event.value!r} (YAML keeps only the last)",
                        )
                    frame[1].add(event.value)
                frame[2] = not frame[2]
            if isinstance(event, yaml.MappingStartEvent):
                frames.append([True, set(), True])
            elif isinstance(event, yaml.SequenceStartEvent):
                frames.append([False, set(), False])
    except (yaml.YAMLError, RecursionError):
        return None  # the parse below reports it
    return None


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth of a parsed document, stopping early past the limit."""
    if level > MAX_CONFIG_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_config_text(text: str, path: Path | str) -> LoadedConfig:
    """Validate one document; raise ConfigError with every problem found."""
    shown = str(path)
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [Problem(shown, 1, "(file)", f"over {MAX_CONFIG_BYTES} bytes: not an ExplainerConfiguration")]
        )
    found = _event_problem(text)
    if found is not None:
        raise ConfigError([Problem(shown, found[0], "(yaml)", found[1])])
    try:
        data = yaml.load(text, Loader=_FastLoader)
    except RecursionError:
        raise ConfigError([Problem(shown, 1, "(yaml)", "nested too deeply to be a config")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([Problem(shown, line, "(yaml)", f"malformed YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(shown, 1, "(document)", "expected a mapping (an ExplainerConfiguration)")])

    if _depth(data) > MAX_CONFIG_DEPTH:
        raise ConfigError([Problem(shown, 1, "(document)", f"nested deeper than {MAX_CONFIG_DEPTH} levels")])
    located: list[tuple[Location, str]] = []
    policy_problems, applied = _apply_policy(data, policy())
    config: ExplainerConfiguration | None = None
    try:
        config = ExplainerConfiguration.model_validate(data)
    except ValidationError as exc:
        located.extend(_problems_from_validation(exc))
    if config is not None:
        located.extend(semantic_problems(config))
    model_name = _get(data, "spec.modelName")
    catalogue = model_catalogue()
    if isinstance(model_name, str) and model_name not in catalogue:
        located.append(
            (
                ("spec", "modelName"),
                f"model {model_name!r} is not in the model catalogue "
                f"({model_catalogue_path().name}: {', '.join(sorted(catalogue))})",
            )
        )
    # Policy problems about fields the schema already refused would only repeat them.
    reported = {loc for loc, _ in located}
    located.extend((loc, msg) for loc, msg in policy_problems if loc not in reported)
    elsewhere = catalogue_problems(model_name) if isinstance(model_name, str) else []
    if located or elsewhere:
        index = _line_index(text)
        raise ConfigError(
            [Problem(shown, _line_for(index, loc), format_location(loc), msg) for loc, msg in located]
            + elsewhere
        )
    assert config is not None
    return LoadedConfig(
        path=Path(path),
        config=config,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        text=text,
        defaults_applied=tuple(applied),
    )


def catalogue_problems(model_name: str, path: Path | None = None) -> list[Problem]:
    """Problems of ``model_name``'s ``source`` block in the model catalogue, located in that file."""
    path = path or model_catalogue_path()
    entry = model_catalogue(path).get(model_name)
    if not isinstance(entry, dict) or "source" not in entry:
        return []
    from include.explainers.sources import SourceDeclaration

    _, problems = SourceDeclaration.parse(entry["source"])
    if not problems:
        return []
    index = _line_index(path.read_text())
    out = []
    for problem in problems:
        loc = ("models", model_name, *problem.field.split("."))
        out.append(Problem(str(path), _line_for(index, loc), format_location(loc), problem.message))
    return out


def load_config(path: Path | str) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), 1, "(file)", f"cannot read: {exc}")]) from None
    return parse_config_text(text, path)


def discover_config_files(directory: Path = EXPLAINER_CONFIGS_DIR) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file in ``directory`` (not recursive), sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
