"""The run's staging prefix in object storage: the only channel between the tasks of one run.

Every artifact a later task needs (the config as it was when the run started, the validated frames
and their provenance, the plan, the explanations, the cost, the gate's decision, the explainer's
log, the signed bundle while it uploads) is written under
``s3://<bucket>/_staging/<dag>/<run>/`` and read back from there; XCom carries only URIs, digests
and small JSON. A task may run on any worker: it works in a scratch folder that it removes, and
nothing it leaves on its worker's disk is ever read again. The prefix is removed after the bundle
is published (and expires by a lifecycle rule when a run is abandoned).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.configuration.layout import safe_key_part

# A staged JSON document is small (plans, gates, summaries, run records); a larger one is refused
# rather than read into a task's memory.
MAX_STAGED_JSON_BYTES = 32 * 1024 * 1024


class StageFailed(RuntimeError):
    """A stage refused to continue (failed expectation, fidelity below threshold, over budget)."""


class StagedObjectMissing(StageFailed):
    """An object an earlier task staged is gone (deleted, expired, or never written)."""


def staging_prefix_for(dag_id: str, run_key: str) -> str:
    return f"_staging/{safe_key_part(dag_id)}/{run_key}/"


def _missing(error: Exception) -> bool:
    code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound") or "Not Found" in str(error)


@dataclass(frozen=True)
class RunStaging:
    """Objects of one run under its staging prefix (``name`` is a path relative to the prefix)."""

    s3: Any
    bucket: str
    prefix: str  # "_staging/<dag>/<run>/"

    def key(self, name: str) -> str:
        return self.prefix + name.lstrip("/")

    def uri(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def name_of(self, uri: str) -> str:
        """The staged name of ``uri`` (a URI under this run's prefix; anything else is refused)."""
        head = self.uri()
        if not uri.startswith(head):
            raise StageFailed(f"{uri} is not under this run's staging prefix {head}")
        return uri[len(head) :]

    # ------------------------------------------------------------------ writes

    def put_bytes(self, name: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)
        return self.uri(name)

    def put_json(self, name: str, data: Any) -> str:
        body = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
        return self.put_bytes(name, body.encode())

    def put_file(self, name: str, path: Path) -> str:
        self.s3.upload_file(str(path), self.bucket, self.key(name))
        return self.uri(name)

    def put_tree(self, name: str, folder: Path, last: str | None = None) -> str:
        """Upload every file under ``folder`` to ``name/``; ``last`` (a relative path) goes last, so
        a reader that finds it knows the rest is there."""
        base = name.rstrip("/") + "/"
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)
        for path in files:
            self.put_file(base + path.relative_to(folder).as_posix(), path)
        return self.uri(base)

    def put_archive(self, name: str, folder: Path) -> str:
        """Every file under ``folder`` as one tar object ``name``: one request instead of one per file
        (on S3 each costs tens of milliseconds), and the set is complete or absent, never partial."""
        import tarfile

        with tempfile.TemporaryDirectory(prefix="xac-archive-", dir=os.environ.get("TMPDIR")) as scratch:
            archive = Path(scratch) / "archive.tar"
            with tarfile.open(archive, "w") as tar:
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
            return self.put_file(name, archive)

    # ------------------------------------------------------------------ reads

    def _refuse_missing(self, name: str, error: Exception) -> StagedObjectMissing:
        return StagedObjectMissing(
            f"{self.uri(name)} is missing: an earlier task of this run staged it there and it is gone "
            f"(deleted or expired between tasks); clear the run's tasks from the first one to redo it "
            f"({type(error).__name__}: {error})"
        )

    def get_bytes(self, name: str, max_bytes: int = MAX_STAGED_JSON_BYTES) -> bytes:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))
        except Exception as exc:
            if _missing(exc):
                raise self._refuse_missing(name, exc) from None
            raise
        length = int(response.get("ContentLength") or 0)
        if length > max_bytes:
            raise StageFailed(
                f"{self.uri(name)}: {length} bytes, over the {max_bytes} a staged document may hold"
            )
        body = response["Body"].read(max_bytes + 1)
        if len(body) > max_bytes:
            raise StageFailed(f"{self.uri(name)}: over the {max_bytes} bytes a staged document may hold")
        return body

    def get_json(self, name: str) -> Any:
        raw = self.get_bytes(name)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StageFailed(f"{self.uri(name)} is not JSON: {exc}") from None

    def get_file(self, name: str, target: Path, sha256: str | None = None) -> Path:
        """Download ``name`` to ``target``; with ``sha256``, refuse a copy with another digest."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.download_file(self.bucket, self.key(name), str(target))
        except Exception as exc:
            if _missing(exc):
                raise self._refuse_missing(name, exc) from None
            raise
        if sha256 is not None:
            found = hashlib.sha256(target.read_bytes()).hexdigest()
            if found != sha256:
                raise StageFailed(f"{self.uri(name)} has sha256 {found}, but the run staged {sha256}")
        return target

    def list(self, name: str = "") -> list[str]:
        """Names (relative to ``name``) of the objects under ``name``."""
        base = self.key(name)
        names: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            names += [item["Key"][len(base) :] for item in page.get("Contents", [])]
        return sorted(names)

    def get_tree(self, name: str, target: Path) -> list[str]:
        """Download everything under ``name/`` into ``target``; returns the relative names."""
        base = name.rstrip("/") + "/"
        names = self.list(base)
        for relative in names:
            self.get_file(base + relative, target / relative)
        return names

    def get_archive(self, name: str, target: Path) -> list[str]:
        """Unpack the tar object ``name`` into ``target``; returns the relative names. Only regular
        files and folders inside ``target`` are accepted (tarfile's ``data`` filter)."""
        import tarfile

        with tempfile.TemporaryDirectory(prefix="xac-archive-", dir=os.environ.get("TMPDIR")) as scratch:
            archive = self.get_file(name, Path(scratch) / "archive.tar")
            try:
                with tarfile.open(archive, "r") as tar:
                    names = [m.name for m in tar.getmembers() if m.isfile()]
                    tar.extractall(target, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise StageFailed(f"{self.uri(name)} is not a readable archive: {exc}") from None
        return sorted(names)

    def exists(self, name: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.key(name))
        except Exception as exc:
            if _missing(exc) or "404" in str(exc):
                return False
            raise
        return True

    def remove_all(self, name: str = "") -> int:
        """Delete everything under ``name`` (default: the whole staging prefix, after the bundle is
        published); returns the count."""
        keys = self.list(name)
        for start in range(0, len(keys), 1000):  # one request per 1,000 keys (botocore adds the checksum)
            batch = [{"Key": self.key(name + relative)} for relative in keys[start : start + 1000]]
            answer = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                failed = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in answer["Errors"][:5])
                raise StageFailed(f"could not remove the staged objects of {self.uri()}: {failed}")
        return len(keys)


@contextmanager
def scratch_dir(label: str) -> Iterator[Path]:
    """A task's private scratch folder under ``TMPDIR``, removed when the task's step ends."""
    with tempfile.TemporaryDirectory(
        prefix=f"xac-{safe_key_part(label)}-", dir=os.environ.get("TMPDIR")
    ) as path:
        yield Path(path)
