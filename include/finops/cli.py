"""``xac cost --pod POD.json [--pricing PATH] [--usage USAGE.json]``: price one finished pod.

The FOCUS rows go to stdout as a JSON array (pipe them into jq or a file); a one-line summary
goes to stderr. Without ``--usage``, the usage sources configured by environment are asked
(``XAC_PROMETHEUS_URL``: see include/finops/usage_sources.py); with none, requests are billed.
Exit codes follow include/cli/main.py: 0 priced; 1 the pod cannot be priced (PricingError: no
start/finish time, no resources, a GPU resource without a price); 2 an input file is missing, is
a folder, is not UTF-8 text, is not the JSON/YAML it should be (also: too deeply nested), or a price
catalogue is not shaped as one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class _InputError(Exception):
    pass


def _read(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _InputError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _InputError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        # YAML is a superset of JSON: a cluster profile or node may be written either way.
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise _InputError(
            f"{what} {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    except RecursionError:
        raise _InputError(f"{what} {path}: too deeply nested to be a {what} file") from None


def run_cost_command(
    pod_path: str | Path,
    pricing_path: str | Path | None,
    usage_path: str | Path | None,
    *,
    node_path: str | Path | None = None,
    cluster_profile_path: str | Path | None = None,
) -> int:
    from include.finops.pod import price_pod
    from include.finops.pricing import DEFAULT_CATALOGUE, PricingError, load_catalogue

    try:
        pod = _read(pod_path, "pod")
        usage = _read(usage_path, "usage") if usage_path else None
        node = _read(node_path, "node") if node_path else None
        profile = _read(cluster_profile_path, "cluster profile") if cluster_profile_path else None
        for value, what in ((pod, "pod"), (usage, "usage"), (node, "node"), (profile, "cluster profile")):
            if value is not None and not isinstance(value, dict):
                raise _InputError(f"{what}: expected a JSON object")
    except _InputError as exc:
        print(f"xac cost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        catalogue = load_catalogue(pricing_path or DEFAULT_CATALOGUE)
    except OSError as exc:
        print(f"xac cost: pricing {pricing_path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if Path(pricing_path or DEFAULT_CATALOGUE).suffix == ".json" else "YAML"
        print(f"xac cost: pricing {pricing_path}: not valid {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError as exc:
        print(f"xac cost: pricing {pricing_path}: not UTF-8 text (byte {exc.start})", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print(f"xac cost: pricing {pricing_path}: too deeply nested to be a price catalogue", file=sys.stderr)
        return EXIT_USAGE
    except PricingError as exc:
        print(f"xac cost: pricing: {exc}", file=sys.stderr)
        return EXIT_USAGE
    usage_notes: tuple[str, ...] = ()
    if usage is None:
        # No --usage file: ask the usage sources configured by environment (XAC_PROMETHEUS_URL).
        from include.finops.usage_sources import collect_usage, sources_from_environment

        sources = sources_from_environment()
        if sources:
            try:
                collected = collect_usage(pod, sources)
            except PricingError as exc:
                print(f"xac cost: cannot price {pod_path}: {exc}", file=sys.stderr)
                return EXIT_CHECK_FAILED
            usage, usage_notes = collected.usage, collected.notes
    try:
        cost = price_pod(pod, catalogue, usage=usage, cluster_profile=profile, node=node)
    except PricingError as exc:
        print(f"xac cost: cannot price {pod_path}: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(json.dumps(cost.rows, indent=2, default=str))
    print(
        f"{cost.pod}: {cost.total:.10f} {cost.currency} for {cost.runtime_seconds:g} s "
        f"({cost.phase}, {cost.capacity} via {cost.capacity_source}, {cost.usage_source})"
        + "".join(f"; {n}" for n in (*usage_notes, *cost.notes)),
        file=sys.stderr,
    )
    return EXIT_OK
