"""``xac``: the command line of Explainability-as-Code.

Exit codes are a public interface (CI pipelines and auditors script against them):
0 success; 1 a check failed (invalid config, failed expectation, bundle that does not verify,
unpriceable pod); 2 usage error (bad arguments; a file named on the command line that cannot be read
or is too deeply nested to parse); 3 the operation could not run (missing model, unreachable storage,
unexpected error). Each error is one stderr line naming the command and what failed (file, URI, field,
flag), never only an exception type (see ``_error_line``); ``XAC_DEBUG=1`` re-raises instead.

Sub-commands import what they need when they run, so ``xac config validate`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from include.compliance.keys import Keyring

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ERROR = 3


def _config_paths(paths: Sequence[str]) -> list[Path]:
    from include.configuration import discover_config_files

    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        out.extend(discover_config_files(path) if path.is_dir() else [path])
    return out


def cmd_config_validate(args: argparse.Namespace) -> int:
    from include.configuration import ConfigError, load_config

    # a PATH that is not there is a usage error (exit 2), not an invalid configuration (exit 1)
    missing = [raw for raw in args.paths if not Path(raw).exists()]
    for raw in missing:
        print(f"xac config validate: {raw}: no such file or folder", file=sys.stderr)
    if missing:
        return EXIT_USAGE
    files = _config_paths(args.paths)
    if not files:
        print("no configuration files found", file=sys.stderr)
        return EXIT_CHECK_FAILED
    failed = 0
    names: dict[str, Path] = {}
    for path in files:
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                print(problem)
            continue
        if loaded.name in names:
            failed += 1
            print(f"{path}:1: metadata.name: {loaded.name!r} is already used by {names[loaded.name]}")
            continue
        names[loaded.name] = path
        if not args.quiet:
            extra = (
                f" (policy defaults: {', '.join(loaded.defaults_applied)})" if loaded.defaults_applied else ""
            )
            print(f"{path}: ok: {loaded.name}{extra}", file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    from include.configuration import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _iso_date(value: str) -> str:
    """``--since``: an ISO date or timestamp, checked when the arguments are parsed (exit 2, not 3)."""
    from datetime import datetime

    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or timestamp (e.g. 2025-01-31 or 2025-01-31T12:00:00Z), not {value!r}"
        ) from None
    return value


def _int_between(low: int, high: int | None = None):
    """An int flag with its allowed range, checked when the arguments are parsed (exit 2, not 3)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {value!r}") from None
        if number < low or (high is not None and number > high):
            allowed = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{number} is out of range: {allowed}")
        return number

    return parse


def _parse_shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), not {value!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {value}: need 0 <= i < n")
    return index, count


_DIRECT_ONLY = (
    "header",
    "endpoint_output",
    "data",
    "method",
    "id_column",
    "num_samples",
    "param",
    "task",
    "output_scale",
    "class_names",
    "skops_trust",
)
_CONFIG_ONLY = (
    "config_sha256",
    "model_uri",
    "model_sha256",
    "inference",
    "inference_sha256",
    "background_sha256",
    "model_version",
    "inference_ids",
    "sample_budget",
)


def cmd_explain_model(args: argparse.Namespace) -> int:
    """``xac explain --model SOURCE:LOCATION --data FRAME --method METHOD --out DIR``."""
    from include.explainers.direct import DirectRequest, parse_params, run_direct
    from include.explainers.errors import ExplainError, ModelNotFoundError

    wrong = [
        f"--{name.replace('_', '-')}" for name in _CONFIG_ONLY if getattr(args, name) not in (None, False)
    ]
    if wrong:
        print(f"xac explain: {', '.join(wrong)} go with --config, not --model", file=sys.stderr)
        return EXIT_USAGE
    missing = [f"--{name}" for name in ("data", "method") if not getattr(args, name)]
    if missing or is_s3_out(args.out):
        problem = (
            f"--model needs {' and '.join(missing)}" if missing else "--model writes to a local --out folder"
        )
        print(f"xac explain: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = run_direct(
            DirectRequest(
                model=args.model,
                data=args.data,
                method=args.method,
                out_dir=Path(args.out),
                background=args.background,
                id_column=args.id_column,
                num_samples=args.num_samples,
                seed=0 if args.seed is None else args.seed,
                params=parse_params(args.param),
                task=args.task,
                output_scale=args.output_scale,
                class_names=tuple(args.class_names or ()),
                skops_trusted=tuple(args.skops_trust or ()),
                headers=tuple(args.header or ()),
                endpoint_output=args.endpoint_output,
                output_format=args.output_format,
            )
        )
    except ModelNotFoundError as exc:
        print(f"xac explain: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ExplainError as exc:
        print(f"xac explain: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


def is_s3_out(value: str) -> bool:
    return str(value).startswith("s3://")


def cmd_explain(args: argparse.Namespace) -> int:
    if args.model is not None:
        if args.config is not None:
            print("xac explain: give --config or --model, not both", file=sys.stderr)
            return EXIT_USAGE
        return cmd_explain_model(args)
    if args.config is None:
        print(
            "xac explain: give --config PATH, or --model SOURCE:LOCATION with --data and --method",
            file=sys.stderr,
        )
        return EXIT_USAGE
    wrong = [
        f"--{name.replace('_', '-')}" for name in _DIRECT_ONLY if getattr(args, name) not in (None, False)
    ]
    if wrong:
        print(f"xac explain: {', '.join(wrong)} go with --model, not --config", file=sys.stderr)
        return EXIT_USAGE
    from include.configuration import ConfigError, load_config
    from include.orchestration.explain_job import ExplainJobError, fetch_config, is_s3_uri, run_explain_job

    try:
        # a pod shares no files with the worker: the config may come from object storage
        config = fetch_config(args.config, args.config_sha256) if is_s3_uri(args.config) else args.config
        loaded = load_config(config)
    except ExplainJobError as exc:
        print(f"xac explain: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CHECK_FAILED
    try:
        summary = run_explain_job(
            loaded,
            out_dir=args.out if is_s3_uri(args.out) else Path(args.out),
            inference_uri=args.inference,
            background_uri=args.background,
            model_version=args.model_version,
            inference_ids=args.inference_ids,
            sample_budget=args.sample_budget,
            seed=args.seed,
            shard=args.shard,
            expected_sha256={"inference": args.inference_sha256, "background": args.background_sha256},
            model_uri=args.model_uri,
            model_sha256=args.model_sha256,
        )
    except ExplainJobError as exc:
        print(f"xac explain: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


def _s3():
    from include.storage import s3_client

    return s3_client()


def _keyring(paths: list[str] | None) -> Keyring:
    """The trusted keys of ``--public-key`` (repeatable: PEM files, folders of *.pub.pem, keyring
    YAMLs), else of ``XAC_PUBLIC_KEY``, else the local signing key's public half."""
    from include.compliance.keys import KeyringError, load_keyring
    from include.storage import default_public_key_path

    if paths:
        return load_keyring(paths)
    default = default_public_key_path()
    if not default.exists():
        raise KeyringError(
            f"public key {default} not found: pass --public-key PATH (the key published beside the "
            "bundles; repeat it, or give a folder or a keyring file, for rotated keys)"
        )
    return load_keyring([default])


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from include.compliance import verify_bundle
    from include.compliance.keys import KeyringError

    try:
        keyring = _keyring(args.public_key)
    except KeyringError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except (UnicodeDecodeError, RecursionError) as exc:  # a key file that is not the text it should be
        problem = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "too deeply nested"
        sources = ", ".join(args.public_key or ["$XAC_PUBLIC_KEY or the local public key"])
        print(f"xac bundle verify: public key {sources}: {problem}", file=sys.stderr)
        return EXIT_ERROR
    target = args.target
    needs_s3 = target.startswith("s3://") or args.chain
    report = verify_bundle(
        target,
        keyring=keyring,
        s3_client=_s3() if needs_s3 else None,
        chain=args.chain,
        max_depth=args.max_depth,
    )
    if args.json:  # the whole report, for CI pipelines and audit scripts; same exit codes
        print(json.dumps({"target": target} | report.to_dict(), indent=2))
        return EXIT_OK if report.ok else EXIT_CHECK_FAILED
    for problem in report.problems:
        print(f"FAIL {problem}")
    for index, link in enumerate(report.chain):
        status = "ok" if link["ok"] else "FAILED"
        signer = f" key {link['key_id']}" if link.get("key_id") else ""
        print(
            f"chain[{index}] {status} {link['uri']} {link['bundle_id']} created {link['created_at']}{signer}"
        )
    if report.chain and not report.chain_complete:
        print(f"chain: stopped after {args.max_depth} link(s) (--max-depth); older bundles not checked")
    if report.ok:
        walked = f", chain of {len(report.chain)} bundle(s)" if report.chain else ""
        print(
            f"verified: {target} bundle {report.bundle_id} "
            f"({report.files_checked} files, {report.bytes_checked} bytes{walked}; key {report.key_id})"
        )
        return EXIT_OK
    print(f"NOT verified: {target} ({len(report.problems)} problem(s))")
    return EXIT_CHECK_FAILED


def _default_buckets() -> list[str]:
    from include.configuration import ConfigError, discover_config_files, load_config

    buckets: list[str] = []
    for path in discover_config_files():
        try:
            bucket = load_config(path).config.spec.storage.bucket
        except ConfigError:
            continue
        if bucket not in buckets:
            buckets.append(bucket)
    return buckets


def cmd_bundle_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from include.compliance import list_bundles

    since = None
    if args.since:
        since = datetime.fromisoformat(args.since)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    client = _s3()
    rows = []
    for bucket in [args.bucket] if args.bucket else _default_buckets():
        rows += list_bundles(
            client,
            bucket,
            prefix=args.prefix or "",
            model=args.model,
            since=since,
            include_incomplete=args.include_incomplete,
        )
    # oldest first across buckets too (each bucket's listing already is)
    epoch = datetime.min.replace(tzinfo=UTC)
    rows.sort(key=lambda r: (r.created_at or epoch, r.uri))
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
    else:
        for r in rows:
            state = "" if r.complete else f"\t{'FLAGGED: ' + r.problem if r.problem else 'incomplete'}"
            created = r.created_at.isoformat() if r.created_at else None
            fields = (created, r.model, str(r.bundle_id)[:16], r.uri)
            print("\t".join(str(f) for f in fields) + state)
    return EXIT_OK


def _as_dict(obj: object) -> dict:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return dict(obj)  # type: ignore[call-overload]


def cmd_bundle_download(args: argparse.Namespace) -> int:
    from include.compliance import download_bundle

    path = download_bundle(_s3(), args.uri, Path(args.to))
    print(path)
    return EXIT_OK


def cmd_bundle_presign(args: argparse.Namespace) -> int:
    from include.compliance import presign_bundle

    links = presign_bundle(_s3(), args.uri, expires_seconds=args.expires)
    if args.json:
        print(json.dumps(links, indent=2))
    else:
        for path, url in links.items():
            print(f"{path}\t{url}")
    return EXIT_OK


def cmd_provenance_check(args: argparse.Namespace) -> int:
    from include.configuration import ConfigError, load_config
    from include.orchestration.pipeline import run_provenance_for_config

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CHECK_FAILED
    from include.provenance.expectations import SuiteError

    try:
        result = run_provenance_for_config(loaded, out_dir=Path(args.out), inference_ids=args.inference_ids)
    except SuiteError as exc:
        print(f"xac provenance check: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(result.summary)
    print(("PASSED" if result.passed else "FAILED") + f": provenance written to {result.provenance_path}")
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def cmd_expectations_init(args: argparse.Namespace) -> int:
    """Draft a feature service's suite (GX 1.x JSON) for a person to review and commit."""
    from include.provenance.expectations import DEFAULT_SUITES_DIR, suite_dirs
    from include.provenance.feature_data import UnknownFeatureServiceError
    from include.provenance.suite_draft import draft_for_service

    target = Path(args.out) if args.out else suite_dirs()[0] / f"{args.feature_service}.json"
    if target.exists() and not args.force:
        print(
            f"xac expectations init: {target} exists (review it, or pass --force to replace it)",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    try:
        draft = draft_for_service(
            args.feature_service, reference=Path(args.reference) if args.reference else None
        )
    except (UnknownFeatureServiceError, ValueError) as exc:
        print(f"xac expectations init: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(draft, indent=2) + "\n")
    os.replace(tmp, target)
    where = (
        "" if target.parent in (DEFAULT_SUITES_DIR, *suite_dirs()) else " (move it where suites are found)"
    )
    print(
        f"{target}: {len(draft['expectations'])} expectations drafted; review the ranges, then commit{where}"
    )
    return EXIT_OK


def cmd_expectations_check(args: argparse.Namespace) -> int:
    """Check suite files against their feature services: each expectation GX accepts, each column known."""
    from include.provenance.expectations import SuiteError, all_suites
    from include.provenance.feature_data import get_store
    from include.provenance.retrieval import service_spec
    from include.provenance.suites import suite_expectations

    try:
        names = args.feature_service or [suite.name for suite in all_suites()]
    except SuiteError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CHECK_FAILED
    store = get_store()
    failed = 0
    for name in names:
        try:
            count = len(suite_expectations(service_spec(store, name)))
        except (SuiteError, ValueError) as exc:
            failed += 1
            print(exc, file=sys.stderr)
            continue
        print(f"{name}: ok ({count} expectations)")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def cmd_feast_init(args: argparse.Namespace) -> int:
    """A minimal Feast repository for a Parquet file (entity, FileSource, FeatureView, FeatureService)."""
    from include.provenance.feast_init import FeastInitError, init_feature_repo

    try:
        result = init_feature_repo(
            Path(args.source),
            entity=args.entity,
            timestamp=args.timestamp,
            out_dir=Path(args.out),
            name=args.name,
            ttl_days=args.ttl_days,
            apply=not args.no_apply,
        )
    except FeastInitError as exc:
        print(f"xac feast init: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(
        f"{result.repo_dir}: feature service {result.feature_service!r} ({len(result.features)} features: "
        f"{', '.join(result.features)}){'' if args.no_apply else ', applied'}; review definitions.py, commit "
        f"it, and set XAC_FEATURE_REPO={result.repo_dir}"
    )
    return EXIT_OK


def cmd_samples_prepare(args: argparse.Namespace) -> int:
    """The samples' own set-up (examples/prepare.py), launched by name: no product module imports the
    samples, and an installation without them says so."""
    import importlib

    try:
        samples = importlib.import_module("examples.prepare")
    except ModuleNotFoundError as exc:
        print(f"xac samples prepare: the samples are not installed here ({exc})", file=sys.stderr)
        return EXIT_ERROR
    for line in samples.prepare_samples(force=args.force):
        print(line)
    return EXIT_OK


def cmd_models_push(args: argparse.Namespace) -> int:
    """Copy versions of the local model store to the shared one (``XAC_MODEL_STORE``)."""
    from include.explainers.errors import ModelLoadError, ModelNotFoundError
    from include.explainers.model_store import push_model, remote_model_store
    from include.storage import s3_client

    try:
        if remote_model_store() is None:
            print(
                "xac models push: set XAC_MODEL_STORE=s3://bucket/prefix (the shared store)", file=sys.stderr
            )
            return EXIT_USAGE
        client = s3_client()
        for version in args.version:
            print(push_model(args.name, version, client))
    except (ModelLoadError, ModelNotFoundError) as exc:
        print(f"xac models push: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def cmd_cost(args: argparse.Namespace) -> int:
    from include.finops.cli import run_cost_command

    return run_cost_command(
        args.pod, args.pricing, args.usage, node_path=args.node, cluster_profile_path=args.cluster_profile
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xac", description="Explainability-as-Code command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="validate configurations, export the schema")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    validate = config_sub.add_parser("validate", help="validate ExplainerConfiguration files or folders")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    validate.set_defaults(func=cmd_config_validate)
    schema = config_sub.add_parser("schema", help="print the JSON Schema of ExplainerConfiguration")
    schema.set_defaults(func=cmd_config_schema)

    explain = sub.add_parser(
        "explain",
        help="run the explainer: for a config (the pod's entrypoint) or a model file (--model)",
        description="Either --config (a DAG's explainer run; the pod's entrypoint) or --model "
        "SOURCE:LOCATION with --data and --method (a model file explained in one command, no config "
        "or feature store).",
    )
    explain.add_argument("--config", metavar="PATH", help="config file or s3:// URI")
    explain.add_argument(
        "--model",
        metavar="SOURCE:LOCATION",
        help="a model to explain without a config: torchscript, torch-export, onnx, xgboost, lightgbm or "
        "skops (then a path or s3:// URI), mlflow (then models:/NAME/VERSION, models:/NAME@ALIAS or "
        "runs:/RUN/PATH) or oip (then the model's V2 URL), e.g. onnx:model.onnx",
    )
    explain.add_argument("--data", metavar="FRAME", help="with --model: Parquet or CSV rows to explain")
    explain.add_argument("--method", metavar="METHOD", help="with --model: KernelSHAP, TreeSHAP, LIME, ...")
    explain.add_argument(
        "--id-column", metavar="COL", help="with --model: the rows' id column (default: row number)"
    )
    explain.add_argument("--num-samples", type=int, metavar="N", help="with --model: numSamples / steps")
    explain.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="with --model: a method parameter (repeatable)"
    )
    explain.add_argument(
        "--task",
        choices=("binary", "multiclass", "regression"),
        help="with --model: when the model does not say",
    )
    explain.add_argument(
        "--output-scale",
        choices=("logits", "probabilities", "raw"),
        help="with --model: what the model returns, when it does not say",
    )
    explain.add_argument(
        "--class-names", nargs="+", metavar="NAME", help="with --model: class names in order"
    )
    explain.add_argument(
        "--skops-trust",
        action="append",
        metavar="TYPE",
        help="with --model skops:...: a type to trust (repeatable)",
    )
    explain.add_argument(
        "--header",
        action="append",
        metavar="NAME:VALUE",
        help="with --model oip:...: a request header (repeatable); VALUE env:VAR reads $VAR",
    )
    explain.add_argument(
        "--endpoint-output",
        metavar="NAME",
        help="with --model oip:...: the output to request (e.g. predict_proba)",
    )
    explain.add_argument("--output-format", choices=("json", "parquet"), default="json", help="with --model")
    explain.add_argument("--config-sha256", metavar="HEX", help="refuse a config with another digest")
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder or s3:// prefix")
    explain.add_argument(
        "--model-uri",
        metavar="URI",
        help="s3:// prefix holding model.pt and model.json; for a catalogue model with a source, the "
        "s3:// copy of its artifact to read instead of the declared location",
    )
    explain.add_argument(
        "--model-sha256", metavar="HEX", help="expected sha256 of the fetched model artifact"
    )
    explain.add_argument("--inference", metavar="URI", help="inference frame (Parquet path or s3:// URI)")
    explain.add_argument("--background", metavar="URI", help="background frame (Parquet path or s3:// URI)")
    explain.add_argument(
        "--inference-sha256", metavar="HEX", help="refuse an inference frame with another digest"
    )
    explain.add_argument(
        "--background-sha256", metavar="HEX", help="refuse a background frame with another digest"
    )
    explain.add_argument("--model-version", metavar="V")
    explain.add_argument("--inference-ids", nargs="+", metavar="ID")
    explain.add_argument("--sample-budget", type=int, metavar="N", help="override numSamples / steps")
    explain.add_argument("--seed", type=int)
    explain.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/n")
    explain.set_defaults(func=cmd_explain)

    bundle = sub.add_parser("bundle", help="list, download and verify compliance bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_sub.add_parser("verify", help="verify a bundle folder or s3:// URI")
    verify.add_argument("target", metavar="PATH_OR_S3_URI")
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="PATH",
        help=(
            "a trusted public key: a PEM file, a folder of *.pub.pem, or a keyring YAML with each key's "
            "period; repeat for rotated keys (default: $XAC_PUBLIC_KEY, else the local signing key's)"
        ),
    )
    verify.add_argument(
        "--chain",
        action="store_true",
        help="also verify every previous bundle of the model, back to the first (hash chain)",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the verification report as JSON (same exit codes)"
    )
    verify.add_argument(
        "--max-depth", type=_int_between(0), metavar="N", help="with --chain: follow at most N links back"
    )
    verify.set_defaults(func=cmd_bundle_verify)
    listing = bundle_sub.add_parser("list", help="list complete bundles")
    listing.add_argument("--bucket", help="default: every bucket named by the configs")
    listing.add_argument("--prefix")
    listing.add_argument("--model")
    listing.add_argument("--since", type=_iso_date, metavar="DATE", help="ISO date or timestamp")
    listing.add_argument("--json", action="store_true")
    listing.add_argument(
        "--include-incomplete",
        action="store_true",
        help="also unfinished publishes and locations whose manifest cannot be read (flagged)",
    )
    listing.set_defaults(func=cmd_bundle_list)
    download = bundle_sub.add_parser("download", help="download a bundle")
    download.add_argument("uri", metavar="S3_URI")
    download.add_argument("--to", default=".", metavar="DIR")
    download.set_defaults(func=cmd_bundle_download)
    presign = bundle_sub.add_parser("presign", help="time-limited download links for every file of a bundle")
    presign.add_argument("uri", metavar="S3_URI")
    presign.add_argument(
        "--expires",
        type=_int_between(1, 7 * 24 * 3600),
        default=3600,
        metavar="SECONDS",
        help="default 3600, max 7 days",
    )
    presign.add_argument("--json", action="store_true")
    presign.set_defaults(func=cmd_bundle_presign)

    provenance = sub.add_parser("provenance", help="feature-store provenance and data validation")
    provenance_sub = provenance.add_subparsers(dest="provenance_command", required=True)
    check = provenance_sub.add_parser("check", help="run the provenance stage alone (exit 1 on failure)")
    check.add_argument("--config", required=True, metavar="PATH")
    check.add_argument("--out", default=os.environ.get("TMPDIR", "/tmp") + "/xac-provenance", metavar="DIR")
    check.add_argument("--inference-ids", nargs="+", metavar="ID")
    check.set_defaults(func=cmd_provenance_check)

    expectations = sub.add_parser(
        "expectations", help="expectation suites kept as data (GX 1.x JSON or YAML)"
    )
    expectations_sub = expectations.add_subparsers(dest="expectations_command", required=True)
    draft = expectations_sub.add_parser(
        "init", help="draft a feature service's suite from the Feast schema and a reference frame"
    )
    draft.add_argument("--feature-service", required=True, metavar="NAME")
    draft.add_argument("--reference", metavar="FRAME", help="Parquet/CSV rows (default: the batch sources)")
    draft.add_argument("--out", metavar="FILE", help="default: <suites folder>/<feature service>.json")
    draft.add_argument("--force", action="store_true", help="replace an existing file")
    draft.set_defaults(func=cmd_expectations_init)
    suites_check = expectations_sub.add_parser(
        "check", help="check suite files against their feature services"
    )
    suites_check.add_argument(
        "--feature-service", nargs="+", metavar="NAME", help="default: every suite file"
    )
    suites_check.set_defaults(func=cmd_expectations_check)

    feast = sub.add_parser("feast", help="a Feast repository for a team that has only a Parquet file")
    feast_sub = feast.add_subparsers(dest="feast_command", required=True)
    feast_init = feast_sub.add_parser(
        "init", help="write and apply a minimal Feast repository for a Parquet file"
    )
    feast_init.add_argument("--from", dest="source", required=True, metavar="FILE.parquet")
    feast_init.add_argument("--entity", required=True, metavar="COL")
    feast_init.add_argument("--timestamp", required=True, metavar="COL")
    feast_init.add_argument(
        "--name", metavar="NAME", help="feature service name (default: from the file name)"
    )
    feast_init.add_argument("--ttl-days", type=int, metavar="DAYS", help="feature view TTL (default: 3650)")
    feast_init.add_argument("--out", default="feature_repo", metavar="DIR")
    feast_init.add_argument("--no-apply", action="store_true", help="write the files only")
    feast_init.set_defaults(func=cmd_feast_init)

    cost = sub.add_parser("cost", help="price one finished Kubernetes pod as FOCUS rows (JSON)")
    cost.add_argument("--pod", required=True, metavar="POD.json")
    cost.add_argument("--pricing", metavar="PATH", help="catalogue YAML or OpenCost custom-pricing JSON")
    cost.add_argument(
        "--usage",
        metavar="USAGE.json",
        help='{"containers": {NAME: {"cpu_cores_avg", "memory_peak_bytes", "gpu_utilisation"}}}',
    )
    cost.add_argument("--node", metavar="NODE.json", help="the pod's node: GPU model, spot, region")
    cost.add_argument("--cluster-profile", metavar="PATH", help="MIG / time-slicing / spot-label rules")
    cost.set_defaults(func=cmd_cost)

    models = sub.add_parser("models", help="the model store")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    push = models_sub.add_parser(
        "push", help="copy model store versions to the shared store named by XAC_MODEL_STORE (s3://)"
    )
    push.add_argument("name", help="model name (as in include/configs/models.yaml)")
    push.add_argument("version", nargs="+", help="version(s) to copy")
    push.set_defaults(func=cmd_models_push)

    samples = sub.add_parser("samples", help="sample data and models of the embedded default")
    samples_sub = samples.add_subparsers(dest="samples_command", required=True)
    prepare = samples_sub.add_parser("prepare", help="write feature data, apply the Feast repo, train models")
    prepare.add_argument("--force", action="store_true")
    prepare.set_defaults(func=cmd_samples_prepare)
    return parser


# The arguments that name what a command reads (files, folders, URIs): an error names them.
_INPUT_ARGS = (
    "paths",
    "config",
    "model",
    "data",
    "background",
    "inference",
    "target",
    "public_key",
    "uri",
    "pod",
    "pricing",
    "usage",
    "node",
    "cluster_profile",
    "source",
    "reference",
)


def _command(args: argparse.Namespace) -> str:
    """``xac bundle verify``: the sub-command that ran, for the first word of an error."""
    sub = getattr(args, f"{args.command}_command", None)
    return " ".join(("xac", args.command, *([sub] if sub else [])))


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files, folders and URIs given on the command line, in the order of ``_INPUT_ARGS``."""
    out: list[str] = []
    for name in _INPUT_ARGS:
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        out += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
    return out


def _given(filename: object, inputs: Sequence[str]) -> bool:
    """Whether an OSError's file is one the user named (also as ``SOURCE:LOCATION``)."""
    if not isinstance(filename, str | bytes | os.PathLike):
        return False
    target = os.path.abspath(os.fsdecode(filename))
    named = {os.path.abspath(part) for raw in inputs for part in (raw, raw.split(":", 1)[-1]) if part}
    return target in named


def _error_line(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """One readable line for an exception no sub-command turned into its own message, and the exit code:
    2 when a file the user named cannot be read or an input is too deeply nested (usage), else 3.
    The line names the command and the input; never only a Python exception type."""
    command, inputs = _command(args), _inputs(args)
    on = f" (input: {', '.join(inputs)})" if inputs else ""
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or str(exc)
        if _given(exc.filename, inputs):
            return f"{command}: {os.fsdecode(exc.filename)}: {reason}", EXIT_USAGE
        other = f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 is not None else ""
        return f"{command}: cannot access {os.fsdecode(exc.filename)}{other}: {reason}{on}", EXIT_ERROR
    if isinstance(exc, RecursionError):
        if inputs:
            return f"{command}: input too deeply nested to read: {', '.join(inputs)}", EXIT_USAGE
        return f"{command}: could not run: too deeply nested", EXIT_ERROR
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or "input/output failed"
    elif isinstance(exc, KeyError):
        detail = f"missing field {exc.args[0]!r}" if exc.args else "a required field is missing"
    elif isinstance(exc, UnicodeDecodeError):
        detail = f"not UTF-8 text (byte {exc.start})"
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "an unexpected internal error"
    return f"{command}: could not run{on}: {detail} (set XAC_DEBUG=1 for the traceback)", EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one readable line naming the command and its input
        if os.environ.get("XAC_DEBUG"):
            raise
        line, code = _error_line(exc, args)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
