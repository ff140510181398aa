"""The run's staging prefix: the only channel between the tasks of one run (real S3 on loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include.orchestration.run_context import ExplainResult, PipelineRun, StagedProvenance
from include.orchestration.staging import RunStaging, StagedObjectMissing, StageFailed


def test_objects_round_trip_and_a_tree_is_written_with_its_marker_last(s3: Any, tmp_path: Path) -> None:
    staging = RunStaging(s3, "runs", "_staging/dag-a/r1/")
    assert staging.put_json("plan.json", {"estimate": 1.5}) == "s3://runs/_staging/dag-a/r1/plan.json"
    assert staging.get_json("plan.json") == {"estimate": 1.5}
    tree = tmp_path / "explain"
    (tree / "explanations").mkdir(parents=True)
    for name in ("run_summary.json", "explanations/a.json", "fidelity.json", "z.json"):
        (tree / name).write_text(name)
    written: list[str] = []
    recording = RunStaging(_Recording(s3, written), "runs", "_staging/dag-a/r1/")
    recording.put_tree("explain", tree, last="run_summary.json")
    assert written[-1].endswith("explain/run_summary.json") and len(written) == 4
    names = staging.get_tree("explain", tmp_path / "copy")
    assert names == ["explanations/a.json", "fidelity.json", "run_summary.json", "z.json"]
    assert (tmp_path / "copy" / "explanations" / "a.json").read_text() == "explanations/a.json"
    assert staging.exists("explain/z.json") and not staging.exists("explain/nothing.json")
    assert staging.remove_all() == 5 and staging.list() == []


def test_an_archive_is_one_object_and_unpacks_only_inside_its_folder(s3: Any, tmp_path: Path) -> None:
    import io
    import tarfile

    staging = RunStaging(s3, "runs", "_staging/dag-a/r4/")
    tree = tmp_path / "bundle"
    (tree / "logs").mkdir(parents=True)
    (tree / "manifest.json").write_text("{}")
    (tree / "logs" / "explain.log").write_text("log")
    assert staging.put_archive("bundle.tar", tree) == "s3://runs/_staging/dag-a/r4/bundle.tar"
    assert staging.list() == ["bundle.tar"]
    assert staging.get_archive("bundle.tar", tmp_path / "out") == ["logs/explain.log", "manifest.json"]
    assert (tmp_path / "out" / "logs" / "explain.log").read_text() == "log"
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"bad"))
    staging.put_bytes("evil.tar", evil.getvalue())
    with pytest.raises(StageFailed, match=r"evil\.tar is not a readable archive"):
        staging.get_archive("evil.tar", tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()
    staging.put_bytes("junk.tar", b"not a tar")
    with pytest.raises(StageFailed, match="is not a readable archive"):
        staging.get_archive("junk.tar", tmp_path / "out3")


def test_a_missing_object_names_what_is_gone(s3: Any, tmp_path: Path) -> None:
    staging = RunStaging(s3, "runs", "_staging/dag-a/r2/")
    with pytest.raises(StagedObjectMissing, match=r"s3://runs/_staging/dag-a/r2/cost.json is missing"):
        staging.get_json("cost.json")
    with pytest.raises(StagedObjectMissing, match="deleted or expired between tasks"):
        staging.get_file("provenance/inference.parquet", tmp_path / "x")
    assert issubclass(StagedObjectMissing, StageFailed)  # a retry cannot bring it back: no retries


def test_reads_are_bounded_and_checked(s3: Any, tmp_path: Path) -> None:
    staging = RunStaging(s3, "runs", "_staging/dag-a/r3/")
    staging.put_bytes("big.json", b"[" + b"1," * 100 + b"1]")
    with pytest.raises(StageFailed, match="203 bytes, over the 64 a staged document may hold"):
        staging.get_bytes("big.json", max_bytes=64)
    staging.put_bytes("broken.json", b"{not json")
    with pytest.raises(StageFailed, match=r"broken\.json is not JSON"):
        staging.get_json("broken.json")
    staging.put_bytes("frame.parquet", b"frame")
    with pytest.raises(StageFailed, match=r"has sha256 [0-9a-f]{64}, but the run staged"):
        staging.get_file("frame.parquet", tmp_path / "f", sha256="0" * 64)
    with pytest.raises(StageFailed, match="not under this run's staging prefix"):
        staging.name_of("s3://runs/_staging/dag-a/other/frame.parquet")


def test_run_results_travel_as_json(make_run: Any) -> None:
    run = make_run("manual__2026-12-07T10:00:00+00:00", inference_ids=("a", "b"))
    again = PipelineRun.from_json(run.to_json() | {"a_field_of_a_newer_dag": 1})
    assert again == run and again.inference_ids == ("a", "b")
    assert run.staging_prefix == "_staging/dag-a/manual__2026-12-07T10:00:00+00:00/"
    staged = StagedProvenance("s3://i", "s3://b", "1" * 64, "2" * 64, "s3://p", "s3://v", ("a",))
    assert StagedProvenance.from_json(staged.to_json()) == staged
    result = ExplainResult(
        "s3://e.tar", "s3://f.json", 2, {}, "kubernetes", 1, "s3://l", pods=("pods/shard-0/try-1-p.json",)
    )
    assert ExplainResult.from_json(result.to_json()) == result


class _Recording:
    """An S3 client that records the order of uploads (and performs them)."""

    def __init__(self, client: Any, written: list[str]) -> None:
        self._client, self._written = client, written

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        self._written.append(key)
        self._client.upload_file(path, bucket, key)
