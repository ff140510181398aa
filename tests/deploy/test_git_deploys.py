"""Git-synced deploys, tested with real local Git repositories.

Both ways a merge becomes a deploy:

1. **GitDagBundle** (apache-airflow-providers-git): a real Airflow stack (scripts/airflow_stack.py) whose
   only DAG bundle is a GitDagBundle on a local repository. Committing a new ExplainerConfiguration makes
   a new DAG appear; committing a change makes the next run record the new commit (Airflow's
   ``bundle_version``) in its compliance bundle; committing a broken config makes the
   ``xac-invalid-<file>`` DAG show the error while the other DAGs keep parsing.
2. **Helm chart git-sync**: ``deploy/helm/values.yaml`` validates against the chart's values schema
   (the vendored subset in data/, see its README), and the DAG folder works from git-sync's on-disk layout
   (``<root>/repo`` → a worktree per commit, swapped atomically, ``include/`` on PYTHONPATH from the
   checkout), parsed by Airflow's DagBag as the DAG processor does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
CHART_SCHEMA = DATA / "airflow-chart-values.schema.subset.json"
SAMPLE = REPO_ROOT / "include" / "configs" / "explainers" / "diagnosis-risk-kernelshap.yaml"
NEW_DAG = "diagnosis-risk-kernelshap-git"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "xac-test",
    "GIT_AUTHOR_EMAIL": "xac-test@example.com",
    "GIT_COMMITTER_NAME": "xac-test",
    "GIT_COMMITTER_EMAIL": "xac-test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# --------------------------------------------------------------------------- helpers


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}  # no user/global config leaks in
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout.strip()


def make_project_repo(work: Path) -> Path:
    """A Git repository with this project's deployable layout: dags/ and include/ (code + configs)."""
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "dags", work / "dags", ignore=ignore)
    shutil.copytree(REPO_ROOT / "include", work / "include", ignore=ignore)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial: the project's DAG file, code and configs")
    return work


def new_config_text(name: str, num_samples: int) -> str:
    """The sample tabular config under another name and bundle prefix (a new model's explainer)."""
    data = yaml.safe_load(SAMPLE.read_text())
    data["metadata"]["name"] = name
    data["spec"]["explainerConfig"]["numSamples"] = num_samples
    data["spec"]["storage"]["path"] = f"{name}/{{model_version}}/{{inference_id}}.json"
    return yaml.safe_dump(data, sort_keys=False)


def commit_file(work: Path, relative: str, text: str, message: str) -> str:
    target = work / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    git(work, "add", relative)
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


BROKEN = """\
apiVersion: ai.apexlogic.com/v1alpha1
kind: ExplainerConfiguration
metadata:
  name: broken-explainer
  namespace: ai-clinical
spec:
  modelName: diagnosis-risk-tabular
  explainerType: SHAP
  explainerConfig:
    method: KernelSHAP
    numSamples: 0
  storage:
    type: s3
    bucket: xac-explanations
    path: "broken/{model_version}/{inference_id}.json"
"""


# --------------------------------------------------------------------------- 2. Helm chart + git-sync


def test_vendored_chart_schema_is_unmodified() -> None:
    readme = (DATA / "README.md").read_text()
    digest = hashlib.sha256(CHART_SCHEMA.read_bytes()).hexdigest()
    assert digest in readme, (
        f"{CHART_SCHEMA.name} changed: record its new sha256 ({digest}) in data/README.md"
    )


def _chart_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(CHART_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_helm_values_validate_against_the_chart_schema() -> None:
    values = yaml.safe_load(VALUES.read_text())
    errors = sorted(_chart_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    # The schema must be able to fail: a misspelt key and a wrong type are refused.
    typo = yaml.safe_load(VALUES.read_text())
    typo["dags"]["gitSync"]["subpath"] = typo["dags"]["gitSync"].pop("subPath")
    assert any("subpath" in e.message for e in _chart_validator().iter_errors(typo))
    wrong = yaml.safe_load(VALUES.read_text())
    wrong["dags"]["gitSync"]["depth"] = "1"
    assert list(_chart_validator().iter_errors(wrong))


def test_helm_values_agree_with_the_repository() -> None:
    values = yaml.safe_load(VALUES.read_text())
    sync = values["dags"]["gitSync"]
    assert sync["enabled"] is True and values["dags"]["persistence"]["enabled"] is False
    # The DAG folder inside the checkout holds the DAG file; include/ sits beside it.
    assert (REPO_ROOT / sync["subPath"] / "explainer_dags.py").is_file()
    assert (REPO_ROOT / sync["subPath"]).parent / "include" == REPO_ROOT / "include"
    # `env` is outside the vendored subset: check its Kubernetes EnvVar shape here.
    env = values["env"]
    assert all(set(item) <= {"name", "value", "valueFrom"} and isinstance(item["name"], str) for item in env)
    mount = values["dags"].get("mountPath") or "/opt/airflow/dags"
    assert {"name": "PYTHONPATH", "value": f"{mount}/repo"} in env
    pin = next(
        line.split("==", 1)[1].strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    )
    assert values["airflowVersion"] == pin and values["defaultAirflowTag"].startswith(pin)


_PARSE = r"""
import json, sys
import include
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "include": include.__file__,
    "dags": {i: {"description": d.description, "doc_md": d.doc_md} for i, d in bag.dags.items()},
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
}))
"""


def parse_dag_folder(folder: Path, pythonpath: Path) -> dict[str, Any]:
    """Parse ``folder`` with Airflow's DagBag in a fresh interpreter, as the DAG processor's workers do."""
    env = {k: v for k, v in os.environ.items() if k != "XAC_CONFIGS_DIR"}
    env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, str(folder)],
        env=env,
        # Not the repository: `python -c` puts the working directory first on sys.path.
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


class GitSyncSimulator:
    """git-sync v4's on-disk protocol: a clone in ``root/.git``, one worktree per synced commit in
    ``root/.worktrees/<sha>``, and the ``root/<link>`` symlink replaced atomically (rename over it)."""

    def __init__(self, origin: Path, root: Path, link: str = "repo") -> None:
        self.origin, self.root, self.link = origin, root, root / link
        root.mkdir(parents=True)
        git(root, "init", "-q")
        git(root, "remote", "add", "origin", str(origin))

    def sync(self) -> str:
        git(self.root, "fetch", "-q", "--depth", "1", "origin", "main")
        sha = git(self.root, "rev-parse", "FETCH_HEAD")
        worktree = self.root / ".worktrees" / sha
        if not worktree.exists():
            git(self.root, "worktree", "add", "-q", "--detach", str(worktree), sha)
        tmp = self.root / f".{self.link.name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(".worktrees") / sha)
        os.replace(tmp, self.link)  # atomic: a reader sees the old or the new checkout, never a mix
        return sha


def test_dag_folder_works_from_the_git_sync_layout(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    sub_path = values["dags"]["gitSync"]["subPath"]
    origin = make_project_repo(tmp_path / "origin")
    sync = GitSyncSimulator(origin, tmp_path / "airflow-home" / "dags")
    dags_folder = sync.link / sub_path  # what the chart sets as [core] dags_folder
    first = sync.sync()

    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert not parsed["import_errors"], parsed["import_errors"]
    # include/ is imported from the synced checkout (PYTHONPATH), not from the image's copy.
    assert Path(parsed["include"]).resolve().is_relative_to((sync.root / ".worktrees" / first).resolve())
    before = set(parsed["dags"])
    assert {"diagnosis-risk-kernelshap", "image-classifier-shap-explainer"} <= before

    # A merge adding a config: after the next sync a new DAG appears.
    commit_file(
        origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 200), "add a config"
    )
    second = sync.sync()
    assert second != first and os.readlink(sync.link) == f".worktrees/{second}"
    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert set(parsed["dags"]) == before | {NEW_DAG}, parsed["import_errors"]

    # A merge with a broken config: its error is a visible DAG, every other DAG still parses.
    commit_file(origin, "include/configs/explainers/broken-explainer.yaml", BROKEN, "a broken config")
    sync.sync()
    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert not parsed["import_errors"], parsed["import_errors"]
    assert set(parsed["dags"]) == before | {NEW_DAG, "xac-invalid-broken-explainer"}
    invalid = parsed["dags"]["xac-invalid-broken-explainer"]
    assert invalid["description"].startswith("INVALID CONFIG broken-explainer.yaml")
    assert "spec.explainerConfig.numSamples" in invalid["doc_md"]


# --------------------------------------------------------------------------- 1. GitDagBundle


def _load_stack_module() -> ModuleType:
    path = REPO_ROOT / "scripts" / "airflow_stack.py"
    spec = importlib.util.spec_from_file_location("xac_airflow_stack_git", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s3_for_stack() -> Iterator[str]:
    from include.embedded import s3_server

    with s3_server.environment() as server:
        yield server.endpoint_url


def _wait_for(predicate: Any, timeout: float, what: str, stack: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if stack.dead_components():
            pytest.fail(f"components died: {stack.dead_components()}\n{stack.log_tail('dag-processor')}")
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}\n{stack.log_tail('dag-processor', 30)}")


@pytest.mark.integration
@pytest.mark.slow
def test_git_dag_bundle_deploys_commits(tmp_path: Path, s3_for_stack: str) -> None:
    from examples.prepare import prepare_samples
    from include.compliance import download_bundle, list_bundles
    from include.storage import s3_client

    for _ in prepare_samples():
        pass
    stack_module = _load_stack_module()
    origin = make_project_repo(tmp_path / "origin")
    first = git(origin, "rev-parse", "HEAD")
    bundles = [
        {
            "name": "xac-git",
            "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
            "kwargs": {
                "repo_url": str(origin),
                "tracking_ref": "main",
                "subdir": "dags",
                "refresh_interval": 3,
            },
        }
    ]
    extra_env = {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3",
        "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
        # Airflow keeps bundle clones under <tmp>/airflow/dag_bundles/<name> by default, shared by every
        # run on the machine: an earlier test run's clone of another origin would be reused.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(tmp_path / "dag_bundles"),
    }
    stack = stack_module.start(home=tmp_path / "stack", extra_env=extra_env, timeout=240.0)
    roots = {p.pid for p in stack.processes.values()}
    try:

        def dag_ids() -> set[str]:
            listed = stack.api("GET", "/api/v2/dags", params={"limit": 100}).json()["dags"]
            return {d["dag_id"] for d in listed}

        before = dag_ids()
        assert "diagnosis-risk-kernelshap" in before

        # 1. Commit a new ExplainerConfiguration: the DAG processor picks it up from the bundle.
        added = commit_file(
            origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 200), "add"
        )
        _wait_for(lambda: NEW_DAG in dag_ids(), 120, f"{NEW_DAG} to appear", stack)
        # The processor can record the version it refreshed from while it already reads the new
        # checkout (seen once: the DAG first listed at the previous commit); the next parse settles it.
        _wait_for(
            lambda: stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json().get("bundle_version") == added,
            60,
            f"{NEW_DAG} at the commit that added it",
            stack,
        )
        dag = stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json()
        assert dag["bundle_name"] == "xac-git" and dag["bundle_version"] == added, dag

        # 2. Commit a change to it; the next run records that commit in its bundle.
        changed = commit_file(
            origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 300), "change"
        )
        _wait_for(
            lambda: stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json().get("bundle_version") == changed,
            120,
            "the change to be parsed",
            stack,
        )
        assert stack.api("PATCH", f"/api/v2/dags/{NEW_DAG}", json={"is_paused": False}).status_code == 200
        response = stack.api(
            "POST",
            f"/api/v2/dags/{NEW_DAG}/dagRuns",
            json={"logical_date": None, "conf": {"inference_ids": ["P100003", "P100042"]}},
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        run = _wait_for(
            lambda: (
                (r := stack.api("GET", f"/api/v2/dags/{NEW_DAG}/dagRuns/{run_id}").json())["state"]
                in ("success", "failed")
                and r
            ),
            300,
            "the run to finish",
            stack,
        )
        assert run["state"] == "success", stack.log_tail("scheduler", 40)
        assert run["bundle_version"] == changed
        client = s3_client()
        mine = [
            b for b in list_bundles(client, "xac-explanations", prefix=f"{NEW_DAG}/") if b.run_id == run_id
        ]
        assert len(mine) == 1
        local = download_bundle(client, mine[0].uri, tmp_path / "bundle")
        manifest = json.loads((local / "manifest.json").read_text())
        assert manifest["run"]["identity"]["bundle_version"] == changed
        assert manifest["run"]["params"]["numSamples"] == 300  # the committed change, not the first version

        # 3. Commit a broken config: the error becomes a visible DAG; the other DAGs keep parsing.
        broken = commit_file(origin, "include/configs/explainers/broken-explainer.yaml", BROKEN, "broken")
        _wait_for(lambda: "xac-invalid-broken-explainer" in dag_ids(), 120, "the invalid-config DAG", stack)
        invalid = stack.api("GET", "/api/v2/dags/xac-invalid-broken-explainer/details").json()
        assert "spec.explainerConfig.numSamples" in invalid["doc_md"]
        assert stack.api("GET", "/api/v2/importErrors").json()["total_entries"] == 0
        for dag_id in before | {NEW_DAG}:
            dag = stack.api("GET", f"/api/v2/dags/{dag_id}").json()
            assert dag["is_stale"] is False and dag["bundle_version"] == broken, dag
        assert first != added != changed != broken
    finally:
        stack_module.stop(stack)
    assert stack_module.stack_processes(stack.stack_id, roots) == {}
