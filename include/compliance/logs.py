"""The run's logs in its bundle: every finished Airflow task log plus the explainer's, secrets redacted.

Airflow 3 writes one file per task attempt under its ``base_log_folder``::

    dag_id=<dag>/run_id=<run>/task_id=<task>/[map_index=<i>/]attempt=<n>.log

(the default ``[logging] log_filename_template``). At publish time :func:`collect_run_logs` copies every
attempt of every task of the run into ``logs/airflow/<task>/[map_index=<i>/]attempt=<n>.log`` and the
explainer process logs (the run workspace's ``logs/*.log``) into ``logs/<name>``, redacting secrets on
the way, and writes ``logs/index.json`` (source, size, digest and redaction counts per file). The
manifest's run dict gets a summary of it (:meth:`LogCollection.to_run_record`): counts per pattern, never
a secret.

What is redacted (:class:`Redactor`):

* known secret values handed in by the caller: in the Airflow task these are the values Airflow's own
  secrets masker holds (connection passwords and sensitive extras, sensitive variables) plus the
  sensitive ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` / AWS variables of the environment
  (:func:`secrets_from_environment`); each value also in its JSON-escaped and URL-encoded forms,
  because Airflow's task logs are JSON lines;
* patterns: PEM private keys, AWS access key ids and secret access keys, bearer tokens, JWTs, passwords
  in URLs (``scheme://user:pass@host``), and ``name=value`` / ``"name": "value"`` pairs whose name
  Airflow would treat as sensitive (``password``, ``token``, ``secret``...).

The publish task cannot bundle its own complete log: the attempt that builds the bundle is still
writing it. That file is copied as it stands when the bundle is assembled and marked incomplete in
``logs/index.json`` and in the manifest, with a note saying where the rest is.

No Airflow import here: the DAG task passes the log folder, the run identity and the masker's secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDACTED = "***"  # what Airflow's masker writes, so both kinds of redaction read the same
# Airflow's default ``[logging] min_length_masked_secret``: shorter values would mangle ordinary words.
MIN_SECRET_LENGTH = 5
INDEX_NAME = "index.json"
AIRFLOW_LOGS_DIR = "airflow"
KNOWN_SECRET = "known_secret"

# Airflow's DEFAULT_SENSITIVE_FIELDS (airflow.sdk._shared.secrets_masker, 3.3): a name containing one of
# these marks its value as secret. Copied so this module works without Airflow; the DAG passes the
# installation's configured list (which adds ``[core] sensitive_var_conn_names``) when it has one.
SENSITIVE_FIELDS = frozenset(
    {
        "access_key",
        "access_token",
        "api_key",
        "apikey",
        "auth_header",
        "authorization",
        "bearer",
        "connection_string",
        "dsn",
        "passphrase",
        "passwd",
        "password",
        "private_key",
        "proxy",
        "proxy_password",
        "proxies",
        "secret",
        "service_account",
        "service_key",
        "token",
        "keyfile_dict",
        "webhook_url",
    }
)
# Values that a sensitive-looking name carries but that are not secrets (counts, flags, redactions).
# "Bearer"/"Basic" are the scheme of an Authorization header: the credential after them has its own pattern.
_HARMLESS_VALUE = re.compile(r"^(\*+|-?\d+(\.\d+)?|true|false|none|null|bearer|basic|)$", re.IGNORECASE)

PUBLISH_LOG_NOTE = (
    "The log of the task that published this bundle ({task_id}, attempt {attempt}) was copied while that "
    "task was still running: it ends where the bundle was assembled. Its remainder (signing, upload, "
    "result) is in Airflow's log store only, outside this bundle."
)


def is_sensitive_name(name: str, fields: Iterable[str] = SENSITIVE_FIELDS) -> bool:
    """Airflow's rule (``should_hide_value_for_key``): the normalised name contains a sensitive field."""
    normalised = re.sub(r"\W+", "_", name.strip().lower())
    return any(f in normalised for f in fields)


@dataclass(frozen=True)
class RedactionPattern:
    """A regex whose group ``group`` (0: the whole match) is replaced by ``***``.

    ``keep`` may veto a match (return False to leave it as it is).
    """

    name: str
    regex: re.Pattern[str]
    group: int = 0
    keep: Callable[[re.Match[str]], bool] | None = None


def _assignment_pattern(fields: Iterable[str]) -> RedactionPattern:
    # name, optional closing quote (plain or JSON-escaped), ':' or '=', optional opening quote, value.
    regex = re.compile(
        r"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,63})(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?"
        r"(?P<value>[^\s\"'\\,;&}\]\)]+)"
    )
    field_set = frozenset(fields)

    def keep(match: re.Match[str]) -> bool:
        return is_sensitive_name(match["name"], field_set) and not _HARMLESS_VALUE.match(match["value"])

    return RedactionPattern("sensitive_assignment", regex, group=2, keep=keep)


def default_patterns(sensitive_fields: Iterable[str] = SENSITIVE_FIELDS) -> tuple[RedactionPattern, ...]:
    """The patterns applied after known values, most specific first (each match counts once)."""
    return (
        # Whole PEM blocks, in plain text or JSON-escaped (\n); a block cut off by the end of a log
        # line is redacted up to where its base64 ends.
        RedactionPattern(
            "pem_private_key",
            re.compile(
                r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----"
                r"(?:.*?-----END \1PRIVATE KEY-----|[A-Za-z0-9+/=\s\\n]*)",
                re.DOTALL,
            ),
        ),
        RedactionPattern(
            "aws_secret_access_key",
            re.compile(
                r"(?i)(aws_?secret_?access_?key|secret_?access_?key|aws_?secret)(?:\\?[\"'])?\s*[:=]\s*"
                r"(?:\\?[\"'])?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
            ),
            group=2,
        ),
        RedactionPattern(
            "aws_access_key_id",
            re.compile(
                r"(?<![A-Z0-9])(?:AKIA|ASIA|AROA|AIDA|AGPA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"
            ),
        ),
        RedactionPattern("bearer_token", re.compile(r"(?i)\b(bearer)\s+([A-Za-z0-9\-._~+/]{8,}=*)"), group=2),
        RedactionPattern("basic_auth", re.compile(r"(?i)\b(basic)\s+([A-Za-z0-9+/]{8,}=*)"), group=2),
        RedactionPattern("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")),
        # scheme://user:password@host; the user may be empty (redis://:pw@host).
        RedactionPattern(
            "url_password",
            re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@\"']*:)([^\s/@\"']+)(@)"),
            group=2,
            keep=lambda m: m[2] != REDACTED,
        ),
        _assignment_pattern(sensitive_fields),
    )


def _forms(secret: str) -> set[str]:
    """A secret as it may appear in a log: as is, JSON-escaped (JSON-lines task logs), URL-encoded."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms.add(urllib.parse.quote(secret, safe=""))
    forms.add(urllib.parse.quote_plus(secret, safe=""))
    return forms


class Redactor:
    """Replaces known secret values and secret-shaped text by ``***``; counts what it replaced.

    ``secrets`` are literal values; ``secret_regexes`` are regular expressions that each match one
    secret. ``mask`` is a masking function applied first (in a task: Airflow's public
    ``airflow.sdk.log.redact``, which knows every connection and variable the task process fetched);
    what it replaces counts as known secrets. Values shorter than ``min_length`` or equal to
    ``airflow`` are ignored, as Airflow's masker ignores them.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        secret_regexes: Iterable[str] = (),
        sensitive_fields: Iterable[str] = SENSITIVE_FIELDS,
        patterns: Iterable[RedactionPattern] | None = None,
        min_length: int = MIN_SECRET_LENGTH,
        mask: Callable[[str], str] | None = None,
    ) -> None:
        self.mask = mask
        alternatives: set[str] = set()
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < min_length or secret.lower() == "airflow":
                continue
            alternatives |= {re.escape(form) for form in _forms(secret) if len(form) >= min_length}
        for regex in secret_regexes:
            try:
                re.compile(regex)
            except re.error:
                continue
            alternatives.add(regex)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(alternatives, key=lambda r: (-len(r), r))
        self._known = re.compile("|".join(f"(?:{r})" for r in ordered)) if ordered else None
        self.known_count = len(ordered)
        self.patterns = tuple(patterns) if patterns is not None else default_patterns(sensitive_fields)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        if self.mask is not None:
            before = text.count(REDACTED)
            text = str(self.mask(text))
            if text.count(REDACTED) > before:
                counts[KNOWN_SECRET] += text.count(REDACTED) - before
        if self._known is not None:
            text, n = self._known.subn(REDACTED, text)
            if n:
                counts[KNOWN_SECRET] += n
        for pattern in self.patterns:
            text = pattern.regex.sub(_replacer(pattern, counts), text)
        return text, counts


def _replacer(pattern: RedactionPattern, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if pattern.keep is not None and not pattern.keep(match):
            return match[0]
        whole = match[0]
        start, end = match.span(pattern.group)
        if start < 0 or whole[start - match.start() : end - match.start()] == REDACTED:
            return whole
        counts[pattern.name] += 1
        offset = match.start()
        return whole[: start - offset] + REDACTED + whole[end - offset :]

    return replace


def secrets_from_environment(
    environ: Mapping[str, str], sensitive_fields: Iterable[str] = SENSITIVE_FIELDS
) -> list[str]:
    """Secret values a worker's environment hands to Airflow and boto3.

    ``AIRFLOW_CONN_<ID>``: the whole value, plus the password and the sensitive extras of a URI or JSON
    connection; ``AIRFLOW_VAR_<NAME>`` when the name is sensitive; ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_SESSION_TOKEN``.
    """
    fields = frozenset(sensitive_fields)
    found: list[str] = []
    for name, value in environ.items():
        if not value:
            continue
        if name.startswith("AIRFLOW_CONN_"):
            found.extend(_connection_secrets(value, fields))
        elif name.startswith("AIRFLOW_VAR_") and is_sensitive_name(name[len("AIRFLOW_VAR_") :], fields):
            found.append(value)
        elif name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            found.append(value)
    return found


def _connection_secrets(value: str, fields: frozenset[str]) -> list[str]:
    found = [value]
    text = value.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return found
        if isinstance(doc, dict):
            if isinstance(doc.get("password"), str):
                found.append(doc["password"])
            found.extend(_sensitive_values(doc.get("extra"), fields))
        return found
    parsed = urllib.parse.urlsplit(text)
    if parsed.password:
        found += [parsed.password, urllib.parse.unquote(parsed.password)]
    for key, item in urllib.parse.parse_qsl(parsed.query):
        if is_sensitive_name(key, fields):
            found.append(item)
    return found


def _sensitive_values(extra: Any, fields: frozenset[str], sensitive: bool = False) -> list[str]:
    if isinstance(extra, str) and extra.startswith("{"):
        try:
            extra = json.loads(extra)
        except ValueError:
            return []
    if isinstance(extra, dict):
        found: list[str] = []
        for key, item in extra.items():
            found += _sensitive_values(item, fields, sensitive or is_sensitive_name(str(key), fields))
        return found
    if isinstance(extra, list):
        return [v for item in extra for v in _sensitive_values(item, fields, sensitive)]
    return [extra] if sensitive and isinstance(extra, str) else []


# --------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class TaskLogSource:
    """Where the run's Airflow task logs are and which secrets to redact (built by the DAG task).

    ``current_task_id``/``current_try`` name the attempt that is publishing: its file is still being
    written, so it is bundled as incomplete.
    """

    base_log_folder: Path | None
    dag_id: str
    run_id: str
    current_task_id: str | None = None
    current_try: int | None = None
    secrets: tuple[str, ...] = ()
    secret_regexes: tuple[str, ...] = ()
    sensitive_fields: frozenset[str] = SENSITIVE_FIELDS
    mask: Callable[[str], str] | None = None  # Airflow's masker, through its public redact()
    # ``[logging] remote_base_log_folder`` when remote logging to S3 is on: every finished attempt of
    # every task is there, whichever worker ran it (the local folder holds only this worker's).
    remote_base: str | None = None

    def redactor(self) -> Redactor:
        return Redactor(
            self.secrets,
            secret_regexes=self.secret_regexes,
            sensitive_fields=self.sensitive_fields,
            mask=self.mask,
        )


@dataclass
class LoggedFile:
    path: str  # bundle-relative
    source: str
    kind: str  # "airflow_task" or "process"
    size: int
    sha256: str
    redactions: dict[str, int]
    task_id: str | None = None
    attempt: int | None = None
    map_index: int | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class LogCollection:
    files: list[LoggedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    searched: str | None = None

    @property
    def redactions(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for item in self.files:
            total.update(item.redactions)
        return dict(sorted(total.items()))

    def to_index(self) -> dict[str, Any]:
        return {
            "files": [item.to_dict() for item in self.files],
            "redactions": self.redactions,
            "airflow_log_folder": self.searched,
            "notes": self.notes,
        }

    def to_run_record(self) -> dict[str, Any]:
        """The summary recorded in the manifest's run dict: counts only, never a secret."""
        return {
            "files": len(self.files),
            "airflow_task_logs": sum(1 for f in self.files if f.kind == "airflow_task"),
            "redactions": self.redactions,
            "incomplete": [f.path for f in self.files if not f.complete],
            "index": f"logs/{INDEX_NAME}",
            "notes": self.notes,
        }


_ATTEMPT_RE = re.compile(r"^attempt=(\d+)\.log$")
_MAP_RE = re.compile(r"^map_index=(-?\d+)$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _run_folder(base: Path, dag_id: str, run_id: str) -> Path:
    return base / f"dag_id={dag_id}" / f"run_id={run_id}"


def find_task_logs(
    base_log_folder: Path, dag_id: str, run_id: str
) -> list[tuple[Path, str, int, int | None]]:
    """(file, task id, attempt, map index) of every regular task log file of one run, sorted.

    Symlinks and names that do not follow Airflow's layout are skipped (the folder is not ours).
    """
    root = _run_folder(Path(base_log_folder), dag_id, run_id)
    if root.is_symlink() or not root.is_dir():
        return []
    found = []
    for task_dir in sorted(root.iterdir()):
        if task_dir.is_symlink() or not task_dir.is_dir() or not task_dir.name.startswith("task_id="):
            continue
        task_id = task_dir.name[len("task_id=") :]
        if not _SAFE_PART.match(task_id):
            continue
        candidates: list[tuple[Path, int | None]] = []
        for entry in sorted(task_dir.iterdir()):
            mapped = _MAP_RE.match(entry.name)
            if mapped and entry.is_dir() and not entry.is_symlink():
                candidates += [(f, int(mapped[1])) for f in sorted(entry.iterdir())]
            else:
                candidates.append((entry, None))
        for path, map_index in candidates:
            attempt = _ATTEMPT_RE.match(path.name)
            if attempt and stat.S_ISREG(path.lstat().st_mode):
                found.append((path, task_id, int(attempt[1]), map_index))
    found.sort(key=lambda item: (item[1], item[3] if item[3] is not None else -1, item[2]))
    return found


def fetch_remote_task_logs(
    s3_client: Any, remote_base: str, dag_id: str, run_id: str, target: Path, max_bytes: int = 256 << 20
) -> int:
    """Download the run's task logs that Airflow's remote logging uploaded under ``remote_base``
    (``s3://bucket/prefix``) into ``target``, laid out as a local ``base_log_folder``; returns the
    count. Keys outside Airflow's layout are skipped; more than ``max_bytes`` in all is refused."""
    from include.compliance import parse_s3_uri

    bucket, prefix = parse_s3_uri(remote_base.rstrip("/") + "/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    run_prefix = f"{prefix}dag_id={dag_id}/run_id={run_id}/"
    count = total = 0
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=run_prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :]
            parts = relative.split("/")
            if any(part in ("", ".", "..") for part in parts) or not _ATTEMPT_RE.match(parts[-1]):
                continue
            total += int(item.get("Size") or 0)
            if total > max_bytes:
                raise ValueError(f"the task logs under s3://{bucket}/{run_prefix} exceed {max_bytes} bytes")
            path = target.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, item["Key"], str(path))
            count += 1
    return count


def _copy_redacted(source: Path, target: Path, redactor: Redactor) -> tuple[int, str, dict[str, int]]:
    # surrogateescape keeps bytes that are not UTF-8 exactly as they were.
    text = source.read_bytes().decode("utf-8", errors="surrogateescape")
    redacted, counts = redactor.redact(text)
    data = redacted.encode("utf-8", errors="surrogateescape")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest(), dict(sorted(counts.items()))


def collect_run_logs(
    logs_dir: Path,
    *,
    process_logs: Iterable[Path] = (),
    source: TaskLogSource | None = None,
    redactor: Redactor | None = None,
) -> LogCollection:
    """Copy the run's logs, redacted, into ``logs_dir`` (the bundle's ``logs/``) and index them.

    ``process_logs`` are the explainer process logs (kept under their own names). ``source`` finds the
    Airflow task logs; without it (or when its folder holds none, as under ``dag.test()``, which writes
    no task log files) only the process logs are bundled and a note says so. Returns what was written;
    ``logs/index.json`` holds the same.
    """
    logs_dir = Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    if redactor is None:
        redactor = source.redactor() if source is not None else Redactor(secrets_from_environment(os.environ))
    collection = LogCollection()
    for path in sorted(process_logs, key=lambda p: p.name):
        if path.is_symlink() or not path.is_file() or not _SAFE_PART.match(path.name):
            continue
        rel = path.name
        size, digest, counts = _copy_redacted(path, logs_dir / rel, redactor)
        collection.files.append(LoggedFile(f"logs/{rel}", str(path), "process", size, digest, counts))
    if source is None or source.base_log_folder is None:
        collection.notes.append("no Airflow log folder was given: only the explainer's log is bundled")
        return _write_index(logs_dir, collection)
    base = Path(source.base_log_folder)
    collection.searched = str(_run_folder(base, source.dag_id, source.run_id))
    if source.remote_base:  # base is a scratch copy of the remote logs: name where they really are
        collection.searched = (
            f"{source.remote_base.rstrip('/')}/dag_id={source.dag_id}/run_id={source.run_id}"
        )
    found = find_task_logs(base, source.dag_id, source.run_id)
    if not found:
        collection.notes.append(
            f"no Airflow task log files under {collection.searched} (remote logging, or a run that "
            "writes none such as dag.test()): only the explainer's log is bundled"
        )
    for path, task_id, attempt, map_index in found:
        parts = [AIRFLOW_LOGS_DIR, task_id]
        if map_index is not None:
            parts.append(f"map_index={map_index}")
        parts.append(f"attempt={attempt}.log")
        rel = "/".join(parts)
        size, digest, counts = _copy_redacted(path, logs_dir / rel, redactor)
        complete = not (task_id == source.current_task_id and attempt == source.current_try)
        collection.files.append(
            LoggedFile(
                f"logs/{rel}",
                str(path.relative_to(base)),
                "airflow_task",
                size,
                digest,
                counts,
                task_id=task_id,
                attempt=attempt,
                map_index=map_index,
                complete=complete,
            )
        )
    if source.current_task_id is not None:
        collection.notes.append(
            PUBLISH_LOG_NOTE.format(task_id=source.current_task_id, attempt=source.current_try)
        )
    return _write_index(logs_dir, collection)


def _write_index(logs_dir: Path, collection: LogCollection) -> LogCollection:
    text = json.dumps(collection.to_index(), indent=2, sort_keys=True) + "\n"
    (logs_dir / INDEX_NAME).write_text(text, encoding="utf-8")
    return collection
