"""A real Airflow 3 stack on 127.0.0.1: api-server, scheduler, dag-processor and triggerer (+ Celery workers).

`make airflow` runs ``python scripts/airflow_stack.py up``: it migrates the metadata DB, starts the four
components (LocalExecutor) as child processes, waits until the api-server answers and the sample DAGs are
parsed, prints the URL and the login, and stops everything on Ctrl-C. Other commands::

    python scripts/airflow_stack.py status   # exit 0 when the stack answers, 3 when not
    python scripts/airflow_stack.py down     # stop a stack started by `up` in another terminal

In Python (the end-to-end test)::

    stack = start(db_url="postgresql+psycopg2://postgres@127.0.0.1:5432/xac_e2e_1")
    runs = stack.api("GET", "/api/v2/dags").json()
    stop()

Everything lives under ``$XAC_HOME/airflow-stack`` (its own AIRFLOW_HOME, separate from the one
``make demo`` and the tests use). The metadata DB is the caller's URL, else (``--db auto``) a
``xac_airflow`` database on the PostgreSQL that answers on 127.0.0.1:5432, else SQLite in that folder.
S3 for the tasks: ``S3_ENDPOINT_URL`` (or the ``aws_default`` connection) when set, else the background
server of ``make s3``, else a moto server for the lifetime of ``up`` recording into ``$XAC_HOME/s3``.
``up`` also prepares the sample data, models and signing key (idempotent; ``--no-samples`` skips it).
Login: the simple auth manager's ``admin`` user; the password is ``$XAC_AIRFLOW_PASSWORD`` or ``admin``.
The stack binds to 127.0.0.1 only, so these development credentials are never reachable from elsewhere.

Celery mode (``up --executor celery --workers 2``, ``start(executor="celery", workers=2)``), for tests: the
CeleryExecutor with Redis as broker (``redis://127.0.0.1:6379/0``, every key under a prefix of its own per
stack, so two stacks never share a queue) and the metadata DB as Celery's result backend (PostgreSQL only),
plus N ``airflow celery worker`` processes standing in for N machines: worker ``a``, ``b``, ... has its own
XAC_HOME (``<home>/worker-a/xac``, empty at start: nothing is copied there), working directory, TMPDIR,
Celery hostname and queue (``xac-worker-a``), and reports its own hostname on its task instances. A cluster
policy generated into ``<home>/celery-policy/airflow_local_settings.py`` (on every component's PYTHONPATH,
never in product code) routes the stages of the ``explainability`` DAGs by ``CELERY_ROUTES`` so that
consecutive stages of a run land on different workers. The workers share the stack's AIRFLOW_HOME and its
task log folder (as a remote log store would be shared): their log servers would all want port 8793.
With the CeleryExecutor the tasks see a shared deployment, which must provide a provenance salt, the
signing key and a cost store: the stack passes them to every component (``shared_deployment_environment``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # `python scripts/airflow_stack.py` puts scripts/ first on sys.path, not the repository root.
    sys.path.insert(0, str(REPO_ROOT))

HOST = "127.0.0.1"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "admin"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
DEFAULT_PG_DATABASE = "xac_airflow"
# Every process of a stack inherits this variable. /proc/<pid>/environ is not always readable as such
# (setproctitle reuses that memory for the process title), so `stop` also finds processes by session
# and by parentage; the marker catches children that started their own session.
MARKER_ENV = "XAC_AIRFLOW_STACK_ID"
EXIT_NOT_RUNNING = 3  # LSB "program is not running", as include.embedded.s3_server uses
LOCAL_BUNDLES = (
    '[{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",'
    ' "kwargs": {}}]'
)

# --- Celery mode (tests only) ----------------------------------------------------------------------------
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
WORKER_CONCURRENCY = 2  # task slots per worker: the CI box has 2 cores
ROUTED_DAG_TAG = "explainability"
# Which worker runs each stage of a DAG tagged ROUTED_DAG_TAG: consecutive stages of one run alternate,
# so whatever a stage hands to the next one through the local disk shows up as a failure. Every mapped
# `explain` shard of a run goes to the same worker. Tasks not listed here (other DAGs, the single task of
# an invalid config's DAG) go to FALLBACK_WORKER.
CELERY_ROUTES: tuple[tuple[str, str], ...] = (
    # (task_id,        worker)
    ("load_config", "a"),
    ("provenance", "b"),
    ("plan", "a"),
    ("shards", "b"),
    ("explain", "a"),
    ("join_shards", "b"),
    ("meter_cost", "a"),
    ("fidelity_gate", "b"),
    ("publish_bundle", "a"),
)
FALLBACK_WORKER = "a"
POLICY_DIR = "celery-policy"  # under the stack's home; on every component's PYTHONPATH in Celery mode


def stack_home() -> Path:
    """The stack's AIRFLOW_HOME: under XAC_HOME, never the one `make demo` or the tests use."""
    from include.paths import xac_home

    return xac_home() / "airflow-stack"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- metadata DB


def postgres_answers(timeout: float = 2.0) -> bool:
    """True when the local PostgreSQL accepts the trust-auth ``postgres`` user on 127.0.0.1:5432."""
    try:
        import psycopg2
    except ImportError:
        return False
    try:
        conn = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=int(timeout)
        )
    except Exception:
        return False
    conn.close()
    return True


def postgres_url(database: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def create_postgres_database(database: str, *, fresh: bool) -> str:
    """Create ``database`` on the local PostgreSQL (dropping it first when ``fresh``); return its URL."""
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=2)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            if fresh:
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()
    return postgres_url(database)


def drop_postgres_database(database: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=2)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # FORCE: a component killed mid-query may leave a backend connected for a moment.
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        conn.close()


def sqlite_url(home: Path) -> str:
    return f"sqlite:///{home / 'airflow.db'}"


def resolve_db(choice: str, home: Path) -> str:
    """``auto`` (local PostgreSQL, else SQLite), ``sqlite``, ``postgres`` or a SQLAlchemy URL."""
    if choice == "sqlite":
        return sqlite_url(home)
    if choice in ("auto", "postgres"):
        if postgres_answers():
            return create_postgres_database(DEFAULT_PG_DATABASE, fresh=False)
        if choice == "postgres":
            raise RuntimeError(f"no PostgreSQL answers on {PG_HOST}:{PG_PORT} (user {PG_USER})")
        return sqlite_url(home)
    return choice


# --------------------------------------------------------------------------- Celery mode


def redis_answers(url: str = DEFAULT_BROKER_URL, timeout: float = 2.0) -> bool:
    """True when the Redis server of ``url`` answers PING (a plain socket: no client library needed)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or 6379), timeout=timeout) as sock:
            if parts.password:
                user = f"{parts.username} " if parts.username else ""
                sock.sendall(f"AUTH {user}{parts.password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def postgres_url_answers(db_url: str, timeout: float = 2.0) -> bool:
    """True when the PostgreSQL database of a SQLAlchemy URL accepts a connection."""
    try:
        import psycopg2
        from sqlalchemy.engine import make_url
    except ImportError:
        return False
    url = make_url(db_url)
    try:
        conn = psycopg2.connect(
            host=url.host or PG_HOST,
            port=url.port or PG_PORT,
            user=url.username or PG_USER,
            password=url.password,
            dbname=url.database or "postgres",
            connect_timeout=max(1, int(timeout)),
        )
    except Exception:
        return False
    conn.close()
    return True


def is_postgres_url(db_url: str) -> bool:
    return db_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def worker_queue(letter: str) -> str:
    return f"xac-worker-{letter}"


def worker_letters(count: int) -> list[str]:
    """The workers' letters; CELERY_ROUTES (and FALLBACK_WORKER) must name only these."""
    routed = {letter for _, letter in CELERY_ROUTES} | {FALLBACK_WORKER}
    if not len(routed) <= count <= 26:
        raise ValueError(
            f"workers must be between {len(routed)} (CELERY_ROUTES uses {', '.join(sorted(routed))}) "
            f"and 26, not {count}"
        )
    letters = [chr(ord("a") + i) for i in range(count)]
    assert routed <= set(letters), (routed, letters)
    return letters


def celery_routes() -> dict[str, str]:
    """CELERY_ROUTES as {task_id: queue}."""
    return {task_id: worker_queue(letter) for task_id, letter in CELERY_ROUTES}


def broker_key_prefix(stack_id: str) -> str:
    """Every Redis key and channel of one stack (queues, bindings, broadcasts) starts with this."""
    return f"xac-stack-{stack_id}:"


@dataclass(frozen=True)
class CeleryWorker:
    """One Celery worker of the stack, standing in for a machine of its own."""

    letter: str  # "a", "b", ... ("a2": the machine that replaced worker a)
    root: Path  # its working directory; its XAC_HOME and TMPDIR are inside
    stack_id: str
    queue_letter: str | None = None  # the queue it consumes, when not its own letter's (a replacement)

    @property
    def name(self) -> str:
        """The component's name (in ``processes``, and its log file): ``worker-a``."""
        return f"worker-{self.letter}"

    @property
    def queue(self) -> str:
        return worker_queue(self.queue_letter or self.letter)

    @property
    def hostname(self) -> str:
        """The host name its task instances report (``hostname`` in the REST API)."""
        return f"xac-worker-{self.letter}.{self.stack_id}"

    @property
    def celery_hostname(self) -> str:
        """Its Celery node name, which `celery inspect` answers under; unique per stack."""
        return f"celery@{self.hostname}"

    @property
    def xac_home(self) -> Path:
        return self.root / "xac"

    @property
    def tmpdir(self) -> Path:
        return self.root / "tmp"

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """Its own XAC_HOME, TMPDIR and reported host name on top of the stack's environment; with remote
        logging on, its own log folder too (then a task's log reaches others only through S3)."""
        own = {
            "XAC_HOME": str(self.xac_home),
            "TMPDIR": str(self.tmpdir),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "xac_stack_hostname.hostname",
            "XAC_STACK_WORKER_HOSTNAME": self.hostname,
        }
        if env.get("AIRFLOW__LOGGING__REMOTE_LOGGING", "").lower() == "true":
            own["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.root / "logs")
        return {**env, **own}

    def command(self) -> list[str]:
        return [
            _airflow_bin(),
            "celery",
            "worker",
            "--celery-hostname",
            self.celery_hostname,
            "--queues",
            self.queue,  # its own queue only
            "--concurrency",
            str(WORKER_CONCURRENCY),
            # Each worker's log server would listen on the same fixed port (8793): the workers write
            # task logs into the stack's log folder and the api-server reads them from there.
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        ]


_POLICY_TEMPLATE = '''"""Test-only task routing of Celery test stack {stack_id}, by scripts/airflow_stack.py.

Not product code: it lives only in that stack's home, on its components' PYTHONPATH.
"""

from __future__ import annotations

__all__ = ["task_policy"]

ROUTED_DAG_TAG = {tag!r}
QUEUES = {queues!r}
FALLBACK_QUEUE = {fallback!r}


def task_policy(task):
    tags = set(getattr(getattr(task, "dag", None), "tags", None) or ())
    if ROUTED_DAG_TAG in tags and task.task_id in QUEUES:
        task.queue = QUEUES[task.task_id]
    else:
        task.queue = FALLBACK_QUEUE
'''

_HOSTNAME_MODULE = '''"""[core] hostname_callable of the Celery test stack workers (scripts/airflow_stack.py).

Every worker runs on this one machine; each reports the name of the machine it stands in for.
"""

import os
import socket


def hostname():
    return os.environ.get("XAC_STACK_WORKER_HOSTNAME") or socket.getfqdn()
'''


def write_celery_policy(home: Path, stack_id: str) -> Path:
    """Generate the routing policy and the workers' hostname callable; return the folder they are in."""
    folder = home / POLICY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "airflow_local_settings.py").write_text(
        _POLICY_TEMPLATE.format(
            stack_id=stack_id,
            tag=ROUTED_DAG_TAG,
            queues=celery_routes(),
            fallback=worker_queue(FALLBACK_WORKER),
        )
    )
    (folder / "xac_stack_hostname.py").write_text(_HOSTNAME_MODULE)
    return folder


def celery_environment(*, db_url: str, broker_url: str, stack_id: str, policy_dir: Path) -> dict[str, str]:
    """What every component of a Celery stack runs with on top of ``stack_environment``."""
    pythonpath = os.pathsep.join(p for p in (str(policy_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS["celery"],
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        # Celery's task states go to the metadata DB (tables celery_taskmeta and celery_tasksetmeta).
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        # kombu's Redis transport prefixes every key and channel: stacks sharing one Redis stay apart.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": broker_key_prefix(stack_id),
        # Celery's default, set so that the provider does not warn about it in every component's log.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        # airflow_local_settings (the routing policy) and the workers' hostname callable.
        "PYTHONPATH": pythonpath,
    }


def shared_deployment_environment(db_url: str) -> dict[str, str]:
    """What a shared deployment (several workers) must provide and may not generate on one worker.

    Since the CeleryExecutor makes the tasks treat the stack as a shared deployment, this stands in for
    the deployment's secrets backend: a provenance salt (random, per stack), the signing key and its
    public half (the caller's demo key, ``$XAC_HOME/keys``, as Airflow connections: no worker reads a
    key file) and the cost store (tables ``xac_cost_*`` in the stack's metadata DB). Whatever the
    caller's environment already sets (``AIRFLOW_CONN_XAC_*``, ``XAC_PROVENANCE_SALT``,
    ``XAC_COST_STORE_URL``) is left as it is.
    """
    env: dict[str, str] = {}

    def _connection(conn_id: str, password: str) -> None:
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        if name not in os.environ:
            env[name] = json.dumps({"conn_type": "generic", "password": password})

    if "XAC_PROVENANCE_SALT" not in os.environ:
        _connection("xac_provenance_salt", secrets.token_hex(32))
    try:
        from include.storage import default_public_key_path, default_signing_key_path
    except ImportError:
        pass
    else:
        private, public = default_signing_key_path(), default_public_key_path()
        if private.is_file():
            _connection("xac_signing", private.read_text())
        if public.is_file():
            _connection("xac_keyring", public.read_text())
    if "XAC_COST_STORE_URL" not in os.environ and "AIRFLOW_CONN_XAC_COST_STORE" not in os.environ:
        env["XAC_COST_STORE_URL"] = db_url
    return env


SHARED_MODEL_STORE = "s3://xac-models/team-models"
SHARED_FEATURE_STORE = "postgresql://postgres@127.0.0.1:5432/xac_features"


def shared_services_environment(folder: Path, model_store: str = SHARED_MODEL_STORE) -> dict[str, str]:
    """What a team's workers share besides Airflow's own services: the feature store and the model
    store (the caller's XAC_HOME holds the prepared samples, and S3 is reachable).

    The feature store is the samples' Feast repository on PostgreSQL (``SHARED_FEATURE_STORE``: SQL
    registry, the sources as tables of the PostgreSQL offline store, the online store;
    examples/feature_repo/postgres.py), as a team's shared feature store: no worker's disk holds any
    of it. The model store is S3: the sample models are pushed there, as a team's CI would with
    ``xac models push``.
    """
    from examples.feature_repo.postgres import write_postgres_repo
    from examples.models import train_sample_models
    from include.compliance import ensure_bucket, parse_s3_uri
    from include.explainers.model_store import push_model
    from include.storage import s3_client

    repo = write_postgres_repo(folder / "feature_repo", SHARED_FEATURE_STORE)
    previous = os.environ.get("XAC_MODEL_STORE")
    os.environ["XAC_MODEL_STORE"] = model_store
    try:
        client = s3_client()
        ensure_bucket(client, parse_s3_uri(model_store + "/")[0])
        for path in train_sample_models().values():  # already trained: returns the stored versions
            push_model(path.parent.parent.name, path.parent.name, client)
    finally:
        if previous is None:
            del os.environ["XAC_MODEL_STORE"]
        else:
            os.environ["XAC_MODEL_STORE"] = previous
    catalogue = _catalogue_with_sources_in_s3(folder, model_store, client)
    ensure_bucket(client, REMOTE_LOG_BUCKET)
    return {
        "XAC_FEATURE_REPO": str(repo),
        "XAC_MODEL_STORE": model_store,
        "XAC_MODEL_CATALOGUE": str(catalogue),
        **remote_logging_environment(),
    }


REMOTE_LOG_BUCKET = "xac-airflow-logs"


def remote_logging_environment() -> dict[str, str]:
    """Airflow's remote task logging to the S3 of this environment (``S3_ENDPOINT_URL``, the AWS
    variables) through an ``aws_default`` connection, as a deployment configures it: each task's log is
    uploaded when it ends and read back from there by the api-server and by the publish task."""
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    connection = {
        "conn_type": "aws",
        "login": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "password": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "extra": {"endpoint_url": os.environ["S3_ENDPOINT_URL"], "region_name": region},
    }
    return {
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{REMOTE_LOG_BUCKET}/airflow-logs",
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
    }


def _catalogue_with_sources_in_s3(folder: Path, model_store: str, client: Any) -> Path:
    """A copy of the model catalogue in which every model declared by a source under ``{xac_home}`` (a
    file on the machine that prepared the samples) is read from the model store's bucket instead, as a
    team declares an artifact its CI uploaded: ``XAC_MODEL_CATALOGUE`` points the stack at it."""
    import yaml

    from include.compliance import parse_s3_uri
    from include.configuration.loader import model_catalogue_path
    from include.paths import xac_home

    data = yaml.safe_load(model_catalogue_path().read_text())
    for name, entry in data["models"].items():
        source = entry.get("source") or {}
        uri = str(source.get("uri") or "")
        if not uri.startswith("{xac_home}/"):
            continue
        version = str(entry["defaultVersion"])
        local = Path(uri.replace("{xac_home}", str(xac_home())).replace("{version}", version))
        relative = uri[len("{xac_home}/") :]
        target = f"{model_store}/sources/{relative}"
        bucket, key = parse_s3_uri(target.replace("{version}", version))
        client.upload_file(str(local), bucket, key)
        source["uri"] = target
        data["models"][name]["source"] = source
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def celery_control(broker_url: str, stack_id: str) -> Iterator[Any]:
    """A throwaway Celery app on the stack's broker, for `inspect`/`ping`; closed on exit."""
    from celery import Celery

    app = Celery("xac-airflow-stack", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": broker_key_prefix(stack_id)}
    app.conf.broker_connection_retry_on_startup = False
    try:
        yield app
    finally:
        app.close()


def clear_broker_keys(broker_url: str, stack_id: str) -> int:
    """Delete the stack's keys from Redis (queues, bindings); return how many. Best effort."""
    try:
        import redis
    except ImportError:
        return 0
    try:
        client = redis.Redis.from_url(broker_url, socket_timeout=2)
        keys = list(client.scan_iter(match=f"{broker_key_prefix(stack_id)}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError:
        return 0
    return len(keys)


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"  # a zombie only waits for its parent to reap it


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def stack_processes(stack_id: str, roots: set[int] | frozenset[int] = frozenset()) -> dict[int, str]:
    """Live processes of a stack (pid -> start time), found three ways.

    * descendants of the ``roots`` (the components' pids), through the parent links;
    * members of the sessions the components lead (each starts in its own session), which also
      catches orphans re-parented to init;
    * processes whose environment carries ``MARKER_ENV=stack_id`` (children that called setsid).
    """
    needle = f"{MARKER_ENV}={stack_id}".encode()
    own = os.getpid()
    parents: dict[int, int] = {}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        pid = int(entry.name)
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            continue
        parents[pid] = int(fields[1])
        in_session = int(fields[3]) in roots
        try:
            marked = needle in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            marked = False  # gone, or another user's process
        if in_session or marked or pid in roots:
            found[pid] = fields[19]
    changed = True
    while changed:  # close over the parent links: children of anything found so far
        changed = False
        for pid, ppid in parents.items():
            if pid not in found and (ppid in found or ppid in roots):
                fields = _stat_fields(pid)
                if fields is not None:
                    found[pid] = fields[19]
                    changed = True
    return found


def _signal_pids(pids: dict[int, str], sig: int) -> None:
    for pid, started in pids.items():
        # Only signal the very process we saw, not a newcomer that got the same pid.
        if _proc_start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _terminate(pids: dict[int, str], grace: float) -> None:
    """SIGTERM these processes, then SIGKILL whichever is still alive after ``grace`` seconds."""
    if not pids:
        return
    _signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    _signal_pids({p: s for p, s in pids.items() if _alive(p)}, signal.SIGKILL)


def kill_stack_processes(
    stack_id: str, roots: set[int] | frozenset[int] = frozenset(), grace: float = 10.0
) -> list[int]:
    """Stop every process of the stack by its id; return the pids found."""
    pids = stack_processes(stack_id, roots)
    _terminate(pids, grace)
    return sorted(pids)


# --------------------------------------------------------------------------- the stack


def stack_environment(
    *,
    home: Path,
    port: int,
    db_url: str,
    stack_id: str,
    username: str,
    password_file: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment every component runs with (also what a `airflow` CLI call needs to join it)."""
    # Inherited Airflow settings (the test session's AIRFLOW_HOME and metadata DB, `make`'s exports) must
    # not leak in: the stack has its own home and DB. Connections/variables (AIRFLOW_CONN_*, AIRFLOW_VAR_*),
    # XAC_HOME, S3_ENDPOINT_URL and AWS_* pass through so the tasks see the caller's S3.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "_AIRFLOW")) and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
    }
    venv_bin = str(Path(sys.executable).parent)
    base_url = f"http://{HOST}:{port}"
    jwt_secret = secrets.token_urlsafe(32)
    env.update(
        {
            MARKER_ENV: stack_id,
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(home),
            "GX_ANALYTICS_ENABLED": env.get("GX_ANALYTICS_ENABLED", "false"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor forks `parallelism` workers up front; 32 (the default) is far too many for
            # a laptop or the 2-core CI box, and the sample DAG's tasks run one after the other anyway.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": LOCAL_BUNDLES,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
            # One secret for every component: the api-server signs the UI/REST tokens and the task
            # identity tokens the scheduler's workers present to the execution API with it.
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        }
    )
    env.update(extra_env or {})
    return env


@dataclass
class AirflowStack:
    """Handle on a running stack: its URL, login, processes and start-up timings."""

    home: Path
    port: int
    db_url: str
    username: str
    password: str
    env: dict[str, str]
    stack_id: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    executor: str = "local"
    workers: list[CeleryWorker] = field(default_factory=list)
    broker_url: str | None = None
    _token: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs-stack"

    def token(self, *, refresh: bool = False) -> str:
        """A JWT obtained as the simple auth manager's login page does: POST /auth/token with JSON."""
        if self._token is None or refresh:
            import httpx

            response = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            if response.status_code != 201:
                raise RuntimeError(
                    f"login as {self.username!r} failed: {response.status_code} {response.text}"
                )
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One authenticated REST call (``path`` like ``/api/v2/dags``); returns the httpx response."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        response = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)
        if response.status_code == 401:  # expired token: log in again once
            headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
            response = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)
        return response

    def health(self) -> dict[str, Any] | None:
        """GET /api/v2/monitor/health (no login needed), or None while the api-server does not answer."""
        import httpx

        try:
            response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def dead_components(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def celery_ping(self, timeout: float = 1.0) -> set[str]:
        """The Celery node names of this stack's workers that answer a ping (Celery mode)."""
        if not self.workers or self.broker_url is None:
            return set()
        with celery_control(self.broker_url, self.stack_id) as app:
            replies = app.control.ping(destination=[w.celery_hostname for w in self.workers], timeout=timeout)
        return {name for reply in replies or [] for name in reply}

    def celery_active_queues(self, timeout: float = 2.0) -> dict[str, list[str]]:
        """{Celery node name: the queues it consumes} for the workers that answer (Celery mode)."""
        if not self.workers or self.broker_url is None:
            return {}
        with celery_control(self.broker_url, self.stack_id) as app:
            inspect = app.control.inspect(
                destination=[w.celery_hostname for w in self.workers], timeout=timeout
            )
            answers = inspect.active_queues() or {}
        return {name: sorted(q["name"] for q in queues) for name, queues in answers.items()}

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.log_dir / f"{component}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def replace_worker(
        self, name: str, timeout: float = 60.0, extra_env: dict[str, str] | None = None
    ) -> CeleryWorker:
        """The machine of worker ``name`` dies (SIGKILL to its whole process group: the worker, its pool,
        the task and the explainer process it runs); a new one with an empty disk takes over its queue.
        ``extra_env`` is added to the new one's environment (e.g. a slow network to S3). Returns the
        replacement (``worker-a2`` for ``worker-a``), once it answers a ping."""
        dead = next(w for w in self.workers if w.name == name)
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.workers.remove(dead)
        letter = (
            f"{dead.queue_letter or dead.letter}{sum(1 for k in self.processes if k.startswith(name)) + 2}"
        )
        fresh = CeleryWorker(
            letter=letter,
            root=self.home / f"worker-{letter}",
            stack_id=self.stack_id,
            queue_letter=dead.queue_letter or dead.letter,
        )
        shutil.rmtree(fresh.root, ignore_errors=True)
        for folder in (fresh.root, fresh.xac_home, fresh.tmpdir):
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{fresh.name}.log", "ab") as log:
            self.processes[fresh.name] = subprocess.Popen(
                fresh.command(),
                env={**fresh.environment(self.env), **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=fresh.root,
                start_new_session=True,
            )
        self.workers.append(fresh)
        deadline = time.monotonic() + timeout
        while fresh.celery_hostname not in self.celery_active_queues():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fresh.name} did not answer within {timeout:.0f}s")
            time.sleep(1.0)
        return fresh

    def stop(self, grace: float = 15.0) -> None:
        """Terminate every component's process group, then kill anything of this stack still alive."""
        roots = {p.pid for p in self.processes.values()}
        # Collected before signalling: once a component exits, its children lose their parent link.
        known = stack_processes(self.stack_id, roots)
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Task processes (LocalExecutor workers, task supervisors, `xac explain`) may outlive their
        # parents or have left the process group: stop them by their ids.
        leftovers = {p: s for p, s in known.items() if _alive(p)}
        leftovers.update(stack_processes(self.stack_id, roots))
        _terminate(leftovers, grace=5.0)
        if self.broker_url is not None:
            clear_broker_keys(self.broker_url, self.stack_id)
        state_file(self.home).unlink(missing_ok=True)


_CURRENT: AirflowStack | None = None


def state_file(home: Path) -> Path:
    return home / "stack.json"


def _write_state(stack: AirflowStack, owner_pid: int) -> None:
    data = {
        "owner_pid": owner_pid,
        "stack_id": stack.stack_id,
        "url": stack.base_url,
        "port": stack.port,
        "username": stack.username,
        "db": _redacted(stack.db_url),
        "executor": stack.executor,
        "broker": _redacted(stack.broker_url) if stack.broker_url else None,
        "workers": {
            w.name: {
                "celery_hostname": w.celery_hostname,
                "queue": w.queue,
                "xac_home": str(w.xac_home),
                "cwd": str(w.root),
            }
            for w in stack.workers
        },
        # Start times let `down` tell these pids from reused ones.
        "components": {
            name: {"pid": p.pid, "started": _proc_start_time(p.pid)} for name, p in stack.processes.items()
        },
        "timings": stack.timings,
    }
    tmp = state_file(stack.home).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(state_file(stack.home))


def _redacted(url: str) -> str:
    """The DB URL without a password, for printing."""
    head, sep, tail = url.rpartition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{tail}"


def expected_dag_count() -> int:
    """One DAG per config file (valid or not, see dags/explainer_dags.py)."""
    from include.configuration import discover_config_files

    configs = Path(os.environ.get("XAC_CONFIGS_DIR", REPO_ROOT / "include" / "configs" / "explainers"))
    return len(discover_config_files(configs))


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def start(
    *,
    db_url: str | None = None,
    port: int | None = None,
    home: Path | None = None,
    username: str = DEFAULT_USER,
    password: str | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 180.0,
    executor: str = "local",
    workers: int = 2,
    broker_url: str = DEFAULT_BROKER_URL,
    deployment_settings: bool = True,
) -> AirflowStack:
    """Migrate the DB, start the four components and return once the DAGs are listed by the REST API.

    ``db_url=None`` means SQLite under ``home``. ``timeout`` bounds the wait for readiness (the target is
    well under 60 s; the bound only turns a hang into an error with the components' log tails).

    ``executor="celery"``: the CeleryExecutor and ``workers`` Celery workers (see the module's docstring);
    ``db_url`` must then be a PostgreSQL database that answers (it is also Celery's result backend) and
    ``broker_url`` a Redis that answers. Readiness then also waits for every worker to answer a ping.
    The tasks then see a shared deployment, which must provide its secrets and cost store:
    ``deployment_settings`` provides them (``shared_deployment_environment``); ``False`` leaves them out.
    """
    global _CURRENT
    if _CURRENT is not None:
        raise RuntimeError(f"a stack already runs at {_CURRENT.base_url}; stop() it first")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if executor == "celery":
        _check_celery_services(db_url, broker_url)
        letters = worker_letters(workers)
    home = (home or stack_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    previous = _read_state(home)
    if previous is not None and _alive(int(previous["owner_pid"])):
        raise RuntimeError(
            f"{home} is in use by a running stack at {previous['url']} (pid {previous['owner_pid']})"
        )
    password = password or os.environ.get("XAC_AIRFLOW_PASSWORD") or DEFAULT_PASSWORD
    port = port or free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((HOST, port)) == 0:
            # Otherwise "the api-server answers" could be some other server answering.
            raise OSError(f"port {port} on {HOST} is already in use (choose another with --port)")
    password_file = home / "simple_auth_manager_passwords.json"
    # The simple auth manager reads {user: password} from this file; writing it ourselves gives a known
    # login instead of the random password it generates (and prints) for users missing from it.
    password_file.write_text(json.dumps({username: password}) + "\n")
    password_file.chmod(0o600)
    stack_id = secrets.token_hex(8)
    db = db_url or sqlite_url(home)
    executor_env: dict[str, str] = {}
    celery_workers: list[CeleryWorker] = []
    if executor == "celery":
        policy_dir = write_celery_policy(home, stack_id)
        executor_env = celery_environment(
            db_url=db, broker_url=broker_url, stack_id=stack_id, policy_dir=policy_dir
        )
        if deployment_settings:
            executor_env.update(shared_deployment_environment(db))
        for letter in letters:
            worker = CeleryWorker(letter=letter, root=home / f"worker-{letter}", stack_id=stack_id)
            # A fresh machine at every start: nothing of an earlier stack (or of this host's XAC_HOME).
            shutil.rmtree(worker.root, ignore_errors=True)
            for folder in (worker.root, worker.xac_home, worker.tmpdir):
                folder.mkdir(parents=True, exist_ok=True)
            celery_workers.append(worker)
    else:
        # A policy generated for an earlier Celery stack in this home must not route this one's tasks.
        shutil.rmtree(home / POLICY_DIR, ignore_errors=True)
    env = stack_environment(
        home=home,
        port=port,
        db_url=db,
        stack_id=stack_id,
        username=username,
        password_file=password_file,
        extra_env={**executor_env, **(extra_env or {})},
    )
    stack = AirflowStack(
        home=home,
        port=port,
        db_url=db,
        username=username,
        password=password,
        env=env,
        stack_id=stack_id,
        executor=executor,
        workers=celery_workers,
        broker_url=broker_url if executor == "celery" else None,
    )
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    migrate_log = stack.log_dir / "db-migrate.log"
    with open(migrate_log, "wb") as log:
        migrated = subprocess.run(
            [_airflow_bin(), "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if migrated.returncode != 0:
        tail = "\n".join(migrate_log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"airflow db migrate failed ({migrated.returncode}):\n{tail}")
    stack.timings["migrate_s"] = round(time.perf_counter() - began, 2)
    _CURRENT = stack
    try:
        launched = time.perf_counter()
        for component in COMPONENTS:
            args = [_airflow_bin(), component]
            if component == "api-server":
                args += ["--host", HOST, "--port", str(port)]
            elif component in ("scheduler", "triggerer"):
                # Their log servers listen on every interface on fixed ports (8793/8794); every
                # component shares this machine's log folder, so the api-server reads task logs from
                # disk and only the api-server listens, on 127.0.0.1.
                args.append("--skip-serve-logs")
            with open(stack.log_dir / f"{component}.log", "ab") as log:
                stack.processes[component] = subprocess.Popen(
                    args,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=home,
                    start_new_session=True,  # own process group: stop() signals the whole tree
                )
        for worker in stack.workers:
            with open(stack.log_dir / f"{worker.name}.log", "ab") as log:
                stack.processes[worker.name] = subprocess.Popen(
                    worker.command(),
                    env=worker.environment(env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=worker.root,
                    start_new_session=True,
                )
        _wait_ready(stack, deadline=time.monotonic() + timeout)
        stack.timings["components_ready_s"] = round(time.perf_counter() - launched, 2)
        stack.timings["start_s"] = round(time.perf_counter() - began, 2)
    except BaseException:
        stop()
        raise
    _write_state(stack, os.getpid())
    return stack


def _check_celery_services(db_url: str | None, broker_url: str) -> None:
    """Celery mode needs its metadata DB (also the result backend) on PostgreSQL, and Redis; both up."""
    if db_url is None or not is_postgres_url(db_url):
        raise RuntimeError(
            "the Celery stack needs its metadata DB on PostgreSQL (it is also Celery's result backend): "
            f"pass a postgresql:// db_url, not {_redacted(db_url) if db_url else 'SQLite'}"
        )
    if not postgres_url_answers(db_url):
        raise RuntimeError(f"the Celery stack needs PostgreSQL, and {_redacted(db_url)} does not answer")
    if not broker_url.startswith(("redis://", "rediss://")):
        raise RuntimeError(f"the Celery stack's broker must be Redis (redis://...), not {broker_url!r}")
    if not redis_answers(broker_url):
        raise RuntimeError(
            f"the Celery stack needs Redis as its broker, and {_redacted(broker_url)} does not answer"
        )


def _wait_ready(stack: AirflowStack, deadline: float) -> None:
    """Api-server answers, every component heartbeats, GET /api/v2/dags lists every config's DAG, and
    (Celery mode) every worker answers a ping."""
    expected = expected_dag_count()
    launched = time.perf_counter()
    silent = {w.celery_hostname for w in stack.workers}
    last = "api-server not answering"
    while time.monotonic() < deadline:
        dead = stack.dead_components()
        if dead:
            name, code = next(iter(dead.items()))
            raise RuntimeError(f"{name} exited with {code} during start-up:\n{stack.log_tail(name)}")
        if silent:
            silent -= stack.celery_ping()
            if not silent:
                stack.timings["workers_answer_s"] = round(time.perf_counter() - launched, 2)
        health = stack.health()
        if health is not None:
            stack.timings.setdefault("api_answers_s", round(time.perf_counter() - launched, 2))
            unhealthy = [
                name
                for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if (health.get(name) or {}).get("status") != "healthy"
            ]
            if unhealthy:
                last = f"not healthy yet: {', '.join(unhealthy)}"
            else:
                errors = stack.api("GET", "/api/v2/importErrors").json()
                if errors.get("total_entries"):
                    problems = "\n".join(e.get("stack_trace", "") for e in errors["import_errors"])
                    raise RuntimeError(f"the DAG processor reports import errors:\n{problems}")
                listed = stack.api("GET", "/api/v2/dags", params={"limit": 100}).json()
                count = int(listed.get("total_entries", 0))
                if count < expected:
                    last = f"{count} of {expected} DAGs parsed"
                elif silent:
                    last = f"Celery workers not answering: {', '.join(sorted(silent))}"
                else:
                    return
        time.sleep(0.5)
    tails = "\n".join(f"--- {c}\n{stack.log_tail(c, 15)}" for c in stack.processes)
    raise TimeoutError(f"the Airflow stack was not ready in time ({last})\n{tails}")


def stop(stack: AirflowStack | None = None) -> None:
    """Stop ``stack`` (default: the one this process started)."""
    global _CURRENT
    target = stack or _CURRENT
    if target is None:
        return
    target.stop()
    if target is _CURRENT:
        _CURRENT = None


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[AirflowStack]:
    stack = start(**kwargs)
    try:
        yield stack
    finally:
        stop(stack)


# --------------------------------------------------------------------------- CLI


def _read_state(home: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(state_file(home).read_text()))
    except (OSError, ValueError):
        return None


def _s3_for_up() -> tuple[str, Any]:
    """Where the stack's tasks publish: (description, a moto server this command must stop, or None).

    S3_ENDPOINT_URL or the aws_default connection when set; else the background server of `make s3`;
    else a moto server for the lifetime of `up` that records into the same ``$XAC_HOME/s3`` state, so
    `make s3` later replays the bundles published here.
    """
    from include.embedded import s3_server

    if os.environ.get("S3_ENDPOINT_URL"):
        return os.environ["S3_ENDPOINT_URL"], None
    if os.environ.get("AIRFLOW_CONN_AWS_DEFAULT"):
        return "the aws_default connection (AIRFLOW_CONN_AWS_DEFAULT)", None
    server = s3_server.read_pidfile()
    owned = None
    if server is None:
        server = owned = s3_server.start(
            state_dir=s3_server.default_state_dir(), log_path=s3_server.run_dir() / "s3-stack.log"
        )
    os.environ["S3_ENDPOINT_URL"] = server.endpoint_url
    # moto accepts any credentials; explicit ones keep the tasks away from a developer's AWS profile.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    how = "started for this stack" if owned else "`make s3`"
    return f"{server.endpoint_url} (moto, {how})", owned


def _cmd_up(args: argparse.Namespace) -> int:
    home = stack_home()
    if not args.no_samples:
        from examples.prepare import prepare_samples

        # Idempotent; without the sample data, models and key every run would fail at its first task.
        for line in prepare_samples():
            print(f"  {line}", flush=True)
    # Celery mode needs PostgreSQL: `auto` must not fall back to SQLite there (`postgres` says why it failed).
    db = resolve_db("postgres" if args.executor == "celery" and args.db == "auto" else args.db, home)
    s3_description, own_s3 = _s3_for_up()
    print(f"starting Airflow in {home} (metadata DB {_redacted(db)}) ...", flush=True)

    def _on_signal(signum: int, _frame: object) -> None:
        # `down` (or any SIGTERM) behaves like Ctrl-C: leave the wait loop and stop every component.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        stack = start(
            db_url=db,
            port=args.port,
            timeout=args.timeout,
            executor=args.executor,
            workers=args.workers,
            broker_url=args.broker_url,
        )
    except BaseException as exc:
        if own_s3 is not None:
            own_s3.stop()
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted; stopped", flush=True)
            return 130
        raise
    t = stack.timings
    print(
        f"Airflow is up in {t['start_s']:.1f}s (db migrate {t['migrate_s']:.1f}s, "
        f"components {t['components_ready_s']:.1f}s)\n"
        f"  UI / REST: {stack.base_url}   (REST API: {stack.base_url}/api/v2)\n"
        f"  login:     {stack.username} / {stack.password}\n"
        f"  logs:      {stack.log_dir}/<component>.log; task logs under {stack.home}/logs\n"
        f"  S3:        {s3_description}\n"
        + "".join(
            f"  {w.name}:  {w.celery_hostname}, queue {w.queue}, XAC_HOME {w.xac_home}\n"
            for w in stack.workers
        )
        + (
            f"  broker:    {_redacted(args.broker_url)} (keys {broker_key_prefix(stack.stack_id)}*)\n"
            if stack.workers
            else ""
        )
        + "Ctrl-C stops everything.",
        flush=True,
    )
    try:
        while True:
            dead = stack.dead_components()
            if dead:
                name, code = next(iter(dead.items()))
                print(f"{name} exited with {code}; stopping the stack\n{stack.log_tail(name)}", flush=True)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        stop(stack)
        if own_s3 is not None:
            own_s3.stop()


def _cmd_down(args: argparse.Namespace) -> int:
    home = stack_home()
    state = _read_state(home)
    if state is None:
        print("not running")
        return 0
    owner = int(state["owner_pid"])
    if _alive(owner) and owner != os.getpid():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(owner, signal.SIGTERM)  # the `up` process stops its components itself
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and _alive(owner):
            time.sleep(0.2)
    roots = {
        int(info["pid"])
        for info in state.get("components", {}).values()
        if info.get("started") and _proc_start_time(int(info["pid"])) == info["started"]
    }
    leftovers = kill_stack_processes(str(state["stack_id"]), roots)
    state_file(home).unlink(missing_ok=True)
    print(
        f"stopped the stack at {state['url']}"
        + (f" (killed {len(leftovers)} leftovers)" if leftovers else "")
    )
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    home = stack_home()
    state = _read_state(home)
    if state is None:
        print("not running")
        return EXIT_NOT_RUNNING
    import httpx

    try:
        health = httpx.get(f"{state['url']}/api/v2/monitor/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        print(f"not answering at {state['url']} (stale state in {state_file(home)})")
        return EXIT_NOT_RUNNING
    print(f"running at {state['url']} (login {state['username']}, db {state['db']})")
    for name in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        print(f"  {name}: {(health.get(name) or {}).get('status')}")
    for name, worker in (state.get("workers") or {}).items():
        print(f"  {name}: {worker['celery_hostname']} (queue {worker['queue']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/airflow_stack.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack in the foreground; Ctrl-C stops it")
    up.add_argument(
        "--db",
        default=os.environ.get("XAC_AIRFLOW_DB", "auto"),
        help="auto (local PostgreSQL, else SQLite), sqlite, postgres, or a SQLAlchemy URL",
    )
    up.add_argument("--port", type=int, default=int(os.environ.get("XAC_AIRFLOW_PORT", "8080")))
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument("--no-samples", action="store_true", help="skip preparing the sample data and models")
    up.add_argument(
        "--executor",
        choices=sorted(EXECUTORS),
        default=os.environ.get("XAC_AIRFLOW_EXECUTOR", "local"),
        help="local (LocalExecutor, default) or celery (CeleryExecutor and --workers Celery workers; "
        "needs PostgreSQL and Redis)",
    )
    up.add_argument("--workers", type=int, default=2, help="Celery workers to start (celery only)")
    up.add_argument(
        "--broker-url",
        default=os.environ.get("XAC_CELERY_BROKER_URL", DEFAULT_BROKER_URL),
        help="the Celery broker (Redis; celery only)",
    )
    down = sub.add_parser("down", help="stop the stack that `up` started")
    down.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("status", help="exit 0 when the stack answers, 3 when not")
    args = parser.parse_args(argv)
    handlers = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
