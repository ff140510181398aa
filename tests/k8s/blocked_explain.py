"""Run ``xac explain`` with only the explainer image's packages importable (a test helper).

Usage: python blocked_explain.py REQUIREMENTS_FILE -- <xac explain arguments> [-- <arguments> ...]

Every distribution outside the closure of REQUIREMENTS_FILE (its pins and, recursively, their
dependencies, as the installed metadata declares them) is made unimportable, as it would be in the
explainer image, which installs only that file. Airflow, Feast and Great Expectations are in this
venv, so without the blocker a stray import of them would pass here and fail in the pod.
Each group of arguments is one ``xac explain`` run in this process (torch is imported once);
prints ``EXIT <i> <code>`` per run and the blocked imports that were attempted (optional imports a
library tolerates) as ``BLOCKED: name``; exits 0 only when every run did.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements_file: Path) -> set[str]:
    """Canonical names of the pinned distributions and everything they require (extras included
    only where a requirement names them)."""
    todo: list[tuple[str, frozenset[str]]] = []
    for line in requirements_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            todo.append((req.name, frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        name, extras = todo.pop()
        if (_canonical(name), extras) in seen:
            continue
        seen.add((_canonical(name), extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # not installed here: an optional dependency (platform marker etc.)
        names.add(_canonical(name))
        for raw in dist.requires or []:
            req = Requirement(raw)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return names


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, blocked_modules: set[str]):
        self.blocked_modules = blocked_modules
        self.attempted: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: object = None) -> None:
        top = fullname.split(".", 1)[0]
        if top in self.blocked_modules:
            self.attempted.add(top)
            raise ModuleNotFoundError(f"No module named {fullname!r} (not in the explainer image)")
        return None


def main(argv: list[str]) -> int:
    requirements = Path(argv[0])
    assert argv[1] == "--"
    allowed = closure(requirements)
    by_module = md.packages_distributions()
    blocked = {
        module
        for module, dists in by_module.items()
        # the Dockerfile copies both of the project's packages
        if module not in {"include", "examples"} and not any(_canonical(d) in allowed for d in dists)
    }
    # Nothing outside the closure may already be loaded (this script imports only packaging).
    early = sorted(m for m in blocked if m in sys.modules)
    assert early == [], f"already imported before the blocker: {early}"
    blocker = _Blocker(blocked)
    sys.meta_path.insert(0, blocker)

    from include.cli.main import main as xac_main

    runs: list[list[str]] = [[]]
    for arg in argv[2:]:
        if arg == "--":
            runs.append([])
        else:
            runs[-1].append(arg)
    codes: list[int] = []
    for i, run in enumerate(runs):
        try:
            code = xac_main(["explain", *run])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        codes.append(int(code or 0))
        print(f"EXIT {i} {codes[-1]}", file=sys.stderr, flush=True)
    # The pod reads its frames from s3:// URIs: the S3 path's imports must resolve too
    # (making a client opens no connection).
    from include.compliance import parse_s3_uri
    from include.storage import s3_client

    s3_client(endpoint_url="http://127.0.0.1:9")
    assert parse_s3_uri("s3://bucket/key") == ("bucket", "key")
    for name in sorted(blocker.attempted):
        print(f"BLOCKED: {name}", file=sys.stderr)
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
