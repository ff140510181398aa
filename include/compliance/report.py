"""A self-contained HTML compliance report for one bundle, rendered into the bundle before it is signed.

The reader is a compliance officer who never opens a notebook: the report states, for one run, which
model and data were explained, whether the data passed its checks, what the explanations say (global
and per instance), how faithful they are, what the run cost, and which EU AI Act provisions each
artifact of the bundle supports.

Design choices:

* Everything in the bundle is untrusted (a downloaded bundle may be hostile): every value read from a
  file goes through :func:`esc` (``html.escape``); only markup built here is wrapped in :class:`Markup`.
  A Content-Security-Policy meta tag forbids scripts as a second line of defence.
* Images are referenced by relative path (``plots/<name>.png``), not embedded as ``data:`` URIs: the PNGs
  are already members of the bundle, each with its own sha256 in the signed manifest, so the report
  shows exactly the signed bytes and a verified bundle verifies its pictures too; embedding would
  store every image twice. The price: ``report.html`` shows its images only inside its bundle folder
  (``xac bundle download`` keeps the layout). Each image's sha256 is printed beside it.
* The output is deterministic (no "generated now" timestamp): the bundle id is a content address, and
  two runs with identical outputs should still produce identical reports.
* Standard library only (``string.Template``, ``html``, ``json``); ``yaml`` (already a dependency) is
  used to read the owner block of ``config.yaml`` when it is importable.
"""

from __future__ import annotations

import html
import json
import math
import os
import stat
import string
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_NAME = "report.html"
REPORT_PDF_NAME = "report.pdf"  # the same report laid out as a PDF (include.compliance.report_pdf)
# Per-instance rows shown in the report; all explanations stay in explanations/ regardless.
DEFAULT_MAX_INSTANCES = 200
TOP_FEATURES = 5
TOP_GLOBAL = 25
LOG_TAIL_LINES = 200


class Markup(str):
    """A string of HTML built by this module (never from bundle content): emitted without escaping."""


def esc(value: Any) -> Markup:
    """Escape one value for HTML text or a quoted attribute; None renders as an em dash."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("&mdash;")
    return Markup(html.escape(str(value), quote=True))


def _join(parts: Iterable[Any], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def num(value: Any, digits: int = 4) -> Markup:
    """A number for people: integers with thousands separators, floats to ``digits`` significant digits."""
    if isinstance(value, bool):
        return Markup("yes" if value else "no")
    if isinstance(value, int):
        return esc(f"{value:,}")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return esc(str(value))
        return esc(f"{value:.{digits}g}")
    return esc(value)


def fixed(value: Any, decimals: int = 4) -> Markup:
    """Scores and probabilities in [0, 1]: fixed decimals, so 0.99999 never reads as a perfect "1"."""
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        return esc(value)
    return esc(f"{float(value):.{decimals}f}")


def money(value: Any, currency: Any = None) -> Markup:
    """Costs are tiny per run (1e-5 USD): fixed notation with enough decimals, never scientific."""
    if not _is_number(value):
        return esc(value)
    text = f"{float(value):.8f}".rstrip("0").rstrip(".")
    return esc(f"{text} {currency}" if currency else text)


def code(value: Any) -> Markup:
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, default=str)
    return Markup(f"<code>{esc(value)}</code>")


def badge(ok: bool | None, yes: str, no: str, unknown: str = "not recorded") -> Markup:
    if ok is None:
        return Markup(f'<span class="badge na">{esc(unknown)}</span>')
    cls, text = ("ok", yes) if ok else ("bad", no)
    return Markup(f'<span class="badge {cls}">{esc(text)}</span>')


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> Markup:
    head = _join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        body.append(Markup("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"))
    if not body:
        span = len(headers)
        body.append(Markup(f'<tr><td colspan="{span}" class="muted">none</td></tr>'))
    css = f' class="{esc(cls)}"' if cls else ""
    return Markup(f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def kv_table(rows: Iterable[tuple[str, Any]]) -> Markup:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)
    return Markup(f'<table class="kv"><tbody>{body}</tbody></table>')


def get(data: Any, *path: str | int) -> Any:
    """``data[a][b]...`` or None when any level is missing or of the wrong type (shapes are untrusted)."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(data, list) or not -len(data) <= key < len(data):
                return None
        elif not isinstance(data, dict):
            return None
        data = data[key] if isinstance(key, int) else data.get(key)
        if data is None:
            return None
    return data


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- reading the bundle


@dataclass
class Bundle:
    """The folder's files, read defensively. ``notices`` collects what was missing or unreadable."""

    root: Path
    notices: list[str]

    def regular(self, rel: str) -> Path | None:
        """``root/rel`` when it is a regular file inside root (no symlinks anywhere on the way)."""
        path = self.root
        for part in rel.split("/"):
            if part in ("", ".", ".."):
                return None
            path = path / part
            try:
                mode = path.lstat().st_mode
            except OSError:
                return None
            if stat.S_ISLNK(mode):
                return None
        return path if stat.S_ISREG(path.lstat().st_mode) else None

    def json(self, rel: str, *, required: bool = True) -> dict[str, Any] | None:
        """A JSON object file, or None (with a notice) when missing, unreadable or not an object."""
        path = self.regular(rel)
        if path is None:
            if required:
                self.notices.append(f"{rel} is not in this bundle")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.notices.append(f"{rel} could not be read as JSON: {exc}")
            return None
        if not isinstance(data, dict):
            self.notices.append(f"{rel} is not a JSON object (found {type(data).__name__}); ignored")
            return None
        return data

    def text(self, rel: str) -> str | None:
        path = self.regular(rel)
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.notices.append(f"{rel} could not be read: {exc}")
            return None

    def files(self, folder: str, suffix: str) -> list[str]:
        """Bundle-relative paths of the regular files directly in ``folder`` ending with ``suffix``."""
        base = self.root / folder
        if base.is_symlink() or not base.is_dir():
            return []
        names = sorted(n for n in os.listdir(base) if n.endswith(suffix))
        return [f"{folder}/{n}" for n in names if self.regular(f"{folder}/{n}") is not None]

    def inventory(self) -> list[tuple[str, int, str]]:
        """(path, size, sha256) of every regular file, as the manifest will list them."""
        from include.compliance.bundle import sha256_file

        rows = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if rel in (REPORT_NAME, REPORT_PDF_NAME) or not stat.S_ISREG(full.lstat().st_mode):
                    continue
                size, digest = sha256_file(full)
                rows.append((rel, size, digest))
        return rows


def image(bundle: Bundle, rel: str, alt: str, width: int, digests: Mapping[str, str]) -> Markup:
    """A link + <img> to a bundle file by relative URL (percent-encoded, then attribute-escaped)."""
    url = esc(urllib.parse.quote(rel))
    digest = digests.get(rel)
    caption = f"{rel} (sha256 {digest[:16]}…)" if digest else rel
    return Markup(
        f'<figure><a href="{url}"><img src="{url}" alt="{esc(alt)}" width="{int(width)}" loading="lazy"></a>'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


# --------------------------------------------------------------------------- EU AI Act mapping


@dataclass(frozen=True)
class ArticleRow:
    """One line of the artifact → provision table. Texts paraphrase Regulation (EU) 2024/1689."""

    artifacts: tuple[str, ...]
    provisions: str
    requirement: str
    contribution: str


# Keep these paraphrases faithful to the Regulation: they are read by people checking the mapping.
ARTICLE_MAP: tuple[ArticleRow, ...] = (
    ArticleRow(
        ("config.yaml", "run_summary.json", "summary.json"),
        "Annex IV 1(a), 1(c), 2(b), 2(e) (via Art. 11)",
        "Technical documentation of a high-risk system: name and version of the system and its relation "
        "to previous versions (1(a)); versions of relevant software (1(c)); design specifications and "
        "key design choices (2(b)); assessment of the human-oversight measures, including the technical "
        "measures that facilitate the interpretation of outputs (2(e)).",
        "Declares the explanation method, its parameters and seed, the fidelity threshold and the "
        "budget as reviewed code; records the model name, version and artifact sha256 and the library "
        "versions used.",
    ),
    ArticleRow(
        ("cost.json",),
        "Annex IV 2(c); Art. 13(3)(e)",
        "Annex IV 2(c): the computational resources used to develop, train, test and validate the "
        "system. Art. 13(3)(e): instructions for use state the computational and hardware resources "
        "needed.",
        "Measured CPU, memory and GPU usage of this explanation run, priced per resource (FOCUS rows), "
        "per 1,000 explanations and against the budget. It covers the explanation stage only, not "
        "model training.",
    ),
    ArticleRow(
        ("provenance.json", "validation.json", "logs/explain.log", "logs/index.json"),
        "Art. 12(1), 12(2)",
        "High-risk systems technically allow the automatic recording of events (logs) over their "
        "lifetime; logging enables recording events relevant for identifying risk situations or "
        "substantial modifications, for post-market monitoring (Art. 72) and for monitoring operation "
        "by deployers (Art. 26(5)).",
        "Records, without manual steps, which feature views and source files (with sha256), which git "
        "commit of the feature repository and which hashed entities were used at which time, the "
        "outcome of every data expectation, the explainer's own log and every Airflow task log of the "
        "run (each attempt; secrets redacted, counts in logs/index.json).",
    ),
    ArticleRow(
        ("validation.json",),
        "Art. 26(4)",
        "To the extent the deployer exercises control over the input data, it ensures that input data "
        "is relevant and sufficiently representative in view of the intended purpose.",
        "Great Expectations results for the inference and background frames; a failed critical "
        "expectation stops the run before anything is explained.",
    ),
    ArticleRow(
        ("explanations/*.json", "plots/*_saliency.png", "summary.json", "plots/global_importance.png"),
        "Art. 13(1), 13(3)(b)(iv), 13(3)(b)(vii), 13(3)(d)",
        "Operation sufficiently transparent for deployers to interpret the output and use it "
        "appropriately; instructions for use state, where applicable, the technical capabilities to "
        "provide information relevant to explain the output, information enabling deployers to "
        "interpret the output, and the technical measures facilitating interpretation.",
        "Per-instance attributions (top features, saliency maps, modality shares) and global "
        "importance for the model version in production.",
    ),
    ArticleRow(
        ("explanations/*.json", "plots/*_saliency.png", "fidelity.json", "fidelity_gate.json"),
        "Art. 14(4)(a), 14(4)(c)",
        "Human oversight: the persons assigned can understand the system's capacities and limitations "
        "and monitor its operation, detecting anomalies, dysfunctions and unexpected performance (a), "
        "and correctly interpret its output, taking into account the interpretation tools available (c).",
        "Gives the overseer an interpretation tool per decision plus a measured fidelity score telling "
        "how far that tool can be trusted; a score under the threshold blocks publication and alerts.",
    ),
    ArticleRow(
        ("explanations/*.json",),
        "Art. 86(1)",
        "A person affected by a decision based on the output of an Annex III high-risk system (with "
        "legal or similarly significant effects) may obtain from the deployer clear and meaningful "
        "explanations of the role of the AI system in the decision and the main elements of the "
        "decision.",
        "Supplies the model-side elements (which inputs drove this output, by how much) that a "
        "deployer's explanation to the person can draw on; it is not itself that explanation.",
    ),
    ArticleRow(
        ("fidelity.json", "fidelity_gate.json", "provenance.json"),
        "Art. 72(1)-(3); Annex IV 9",
        "Providers establish a post-market monitoring system that actively and systematically "
        "collects, documents and analyses data on performance throughout the lifetime, based on a "
        "post-market monitoring plan that is part of the technical documentation.",
        "Each run records the fidelity score against the previous bundle (drop alerts) and, when a "
        "previous provenance is given, which data sources changed; the bundle's hash-chain link "
        "(manifest previous_bundle) orders the runs.",
    ),
    ArticleRow(
        ("logs/explain.log", "logs/index.json", "provenance.json", "validation.json"),
        "Art. 19(1); Art. 26(6)",
        "Providers (19(1)) and deployers (26(6)) keep the automatically generated logs under their "
        "control for a period appropriate to the intended purpose, of at least six months, unless "
        "Union or national law (in particular data-protection law) provides otherwise.",
        "The bundle is written once to object storage; the retention section shows the lifecycle and "
        "Object Lock settings applied to its prefix.",
    ),
    ArticleRow(
        ("manifest.json", "statement.dsse.json", "report.html", "report.pdf"),
        "Art. 18(1); Art. 11(1)",
        "Providers keep the technical documentation at the disposal of national competent authorities "
        "for 10 years after the system is placed on the market or put into service, and keep it up to "
        "date.",
        "The manifest lists every file with its sha256 and the run identity; the DSSE-signed in-toto "
        "statement makes later changes detectable. The Regulation prescribes no signing mechanism: "
        "this supports the reliability of what is kept.",
    ),
)

ARTICLE_DISCLAIMER = (
    "References are to Regulation (EU) 2024/1689 (AI Act). The obligations on record-keeping, "
    "transparency, human oversight and log retention apply to high-risk AI systems (Art. 6, Annex III); "
    "whether this system is high-risk is a legal determination outside this report. The artifacts are "
    "evidence supporting those obligations; they do not by themselves establish conformity."
)

SIGNING_ARTIFACTS = frozenset({"manifest.json", "statement.dsse.json"})


def _artifact_status(bundle: Bundle, pattern: str) -> str:
    if pattern == REPORT_NAME:
        return "this report"
    if pattern == REPORT_PDF_NAME:
        return "this report, as PDF"
    if pattern in SIGNING_ARTIFACTS and bundle.regular(pattern) is None:
        return "added when the bundle is signed"
    folder, _, name = pattern.rpartition("/")
    if "*" in name:
        prefix, _, suffix = name.partition("*")
        matches = [p for p in bundle.files(folder, suffix) if p.rpartition("/")[2].startswith(prefix)]
        # "none", not "missing": saliency maps exist only for image models.
        return f"present ({len(matches)})" if matches else "none in this bundle"
    return "present" if bundle.regular(pattern) is not None else "missing"


def _article_section(bundle: Bundle) -> Markup:
    rows = []
    for row in ARTICLE_MAP:
        artifacts = Markup(
            "<br>".join(
                f"{code(a)} <span class=muted>{esc(_artifact_status(bundle, a))}</span>"
                for a in row.artifacts
            )
        )
        rows.append((artifacts, row.provisions, row.requirement, row.contribution))
    return Markup(
        table(
            ["Artifact", "Provision", "What the provision requires", "What this artifact contributes"],
            rows,
            "articles",
        )
        + f'<p class="muted">{esc(ARTICLE_DISCLAIMER)}</p>'
    )


# --------------------------------------------------------------------------- sections


@dataclass
class Loaded:
    """Everything the sections read, parsed once."""

    run: dict[str, Any]
    config_text: str | None
    config: dict[str, Any]
    provenance: Any
    validation: Any
    fidelity: Any
    gate: Any
    summary: Any
    run_summary: Any
    cost: Any
    explanations: list[tuple[str, Any]]
    digests: dict[str, str]


def _model(data: Loaded) -> dict[str, Any]:
    for source in (data.summary, data.run_summary, *(e for _, e in data.explanations[:1])):
        model = get(source, "model")
        if isinstance(model, dict):
            return model
    return {"name": data.run.get("model"), "version": data.run.get("model_version")}


def _section_overview(data: Loaded) -> Markup:
    model = _model(data)
    validation_ok = get(data.validation, "passed")
    gate_ok = get(data.gate, "passed")
    alerts = as_list(get(data.gate, "alerts"))
    cost = as_dict(get(data.cost, "summary"))
    within = cost.get("within_budget")
    explained = data.run.get("explained", get(data.run_summary, "counts", "explanations"))
    return kv_table(
        [
            ("Model", Markup(f"{esc(model.get('name'))} version {esc(model.get('version'))}")),
            ("Run", data.run.get("run_id")),
            ("Explanations", num(explained) if explained is not None else None),
            (
                "Data validation",
                badge(validation_ok if isinstance(validation_ok, bool) else None, "passed", "FAILED"),
            ),
            (
                "Fidelity gate",
                Markup(
                    badge(gate_ok if isinstance(gate_ok, bool) else None, "passed", "FAILED")
                    + (f" {len(alerts)} alert(s)" if alerts else "")
                ),
            ),
            (
                "Cost",
                Markup(
                    f"{money(cost.get('total'), cost.get('currency'))} "
                    + badge(
                        within if isinstance(within, bool) else None,
                        "within budget",
                        "OVER BUDGET",
                        "no budget",
                    )
                ),
            ),
        ]
    )


def _section_model(data: Loaded) -> Markup:
    model = _model(data)
    summary = as_dict(data.summary)
    run_summary = as_dict(data.run_summary)
    libraries = as_dict(run_summary.get("libraries"))
    runtime = as_dict(run_summary.get("runtime"))
    source = as_dict(model.get("source"))
    artifacts = [as_dict(a) for a in as_list(source.get("artifacts"))]
    return Markup(
        kv_table(
            [
                ("Name", model.get("name")),
                ("Version", model.get("version")),
                ("Artifact digest (sha256)", code(model.get("sha256")) if model.get("sha256") else None),
                # a team's own model: what was loaded, from where, byte for byte
                ("Source", f"{source.get('source')} ({source.get('format')})" if source else None),
                ("Location", code(source.get("uri")) if source else None),
                (
                    "Artifacts loaded",
                    Markup(
                        ", ".join(
                            f"{esc(a.get('path'))} ({num(a.get('bytes'))} bytes, "
                            f"sha256 {code(a.get('sha256'))})"
                            for a in artifacts
                        )
                    )
                    if artifacts
                    else None,
                ),
                ("Architecture", model.get("architecture")),
                ("Task", model.get("task")),
                ("Explained output", summary.get("explained_output")),
                (
                    "Explanation method",
                    summary.get("method") or run_summary.get("method") or data.run.get("method"),
                ),
                (
                    "Method parameters",
                    code(
                        summary.get("parameters") or run_summary.get("parameters") or data.run.get("params")
                    ),
                ),
                ("Seed", summary.get("seed", run_summary.get("seed", data.run.get("seed")))),
                ("Libraries", ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())) or None),
                ("Explainer runtime (s)", num(runtime.get("total_seconds")) if runtime else None),
            ]
        )
    )


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    elif isinstance(value, list):
        out.append((prefix, ", ".join(str(v) for v in value) if value else None))
    else:
        out.append((prefix, value))


_RUN_LABELS = {
    "dag_id": "Airflow DAG",
    "run_id": "Airflow run id",
    "identity.run_type": "Run type",
    "identity.triggering_user": "Triggered by (user)",
    "identity.triggered_by": "Triggered by",
    "identity.logical_date": "Logical date",
    "identity.run_after": "Run after",
    "identity.try_number": "Try number",
    "identity.bundle_name": "DAG bundle",
    "identity.bundle_version": "DAG bundle version (git commit)",
    "config_name": "Configuration",
    "config_file": "Configuration file",
    "config_sha256": "Configuration sha256",
    "policy_defaults_applied": "Policy defaults applied",
    "started_at": "Started at",
}


def _section_run(data: Loaded) -> Markup:
    flat: list[tuple[str, Any]] = []
    _flatten("", data.run, flat)
    values = dict(flat)
    rows: list[tuple[str, Any]] = [
        (label, values[key]) for key, label in _RUN_LABELS.items() if key in values
    ]
    # Everything else the pipeline recorded, under its own key: nothing in the run dict is hidden.
    rows += [(k, v) for k, v in flat if k not in _RUN_LABELS]
    owner = as_dict(get(data.config, "spec", "owner"))
    metadata = as_dict(get(data.config, "metadata"))
    if owner:
        rows.append(("Accountable team", owner.get("team")))
        rows.append(("Contact", owner.get("email")))
        rows.append(("Cost centre", owner.get("costCenter")))
    if metadata.get("namespace"):
        rows.append(("Namespace", metadata.get("namespace")))
    run_summary = as_dict(data.run_summary)
    if run_summary.get("created_at"):
        rows.append(("Explainer finished at", run_summary.get("created_at")))
    shard = as_dict(run_summary.get("shard"))
    if shard:
        rows.append(("Shard", f"{shard.get('index')} of {shard.get('count')}"))
    if not data.run:
        rows.insert(0, ("Note", "no run record was given to the renderer; identity fields are incomplete"))
    return kv_table(rows)


def _section_provenance(data: Loaded) -> Markup:
    prov = as_dict(data.provenance)
    if not prov:
        return Markup('<p class="muted">provenance.json is missing or unreadable (see the notices).</p>')
    service = as_dict(prov.get("feature_service"))
    repo = as_dict(prov.get("feature_repo"))
    git = as_dict(repo.get("git"))
    registry = as_dict(prov.get("registry"))
    retrieval = as_dict(prov.get("retrieval"))
    entity = as_dict(prov.get("entity"))
    parts = [
        kv_table(
            [
                ("Feature service", service.get("name")),
                ("Description", service.get("description")),
                ("Owner", service.get("owner")),
                ("Service last updated", service.get("last_updated_timestamp")),
                ("Feature registry", f"{registry.get('type')} project {registry.get('project')}"),
                ("Registry last updated", registry.get("last_updated")),
                ("Feature repository", repo.get("path")),
                ("Git commit", code(git.get("commit")) if git.get("commit") else None),
                (
                    "Uncommitted changes",
                    num(git.get("dirty")) if isinstance(git.get("dirty"), bool) else None,
                ),
                ("Entity", f"{entity.get('name')} (key {entity.get('join_key')})"),
                ("Entity ids", entity.get("id_hashing")),
                ("Retrieval", retrieval.get("method")),
                ("Retrieved at", retrieval.get("timestamp")),
                ("Inference selection", code(retrieval.get("inference"))),
                ("Background selection", code(retrieval.get("background"))),
            ]
        )
    ]
    views = []
    for view in as_list(prov.get("feature_views")):
        source = as_dict(get(view, "batch_source"))
        changed = source.get("digest_changed")
        views.append(
            (
                get(view, "name"),
                len(as_list(get(view, "features"))),
                get(view, "owner"),
                source.get("path"),
                code(source.get("sha256")) if source.get("sha256") else None,
                num(source.get("size_bytes")),
                "not compared"
                if "digest_changed" not in source
                else ("changed" if changed else "unchanged" if changed is False else "new"),
            )
        )
    parts.append(Markup("<h3>Feature views and source digests</h3>"))
    parts.append(table(["View", "Features", "Owner", "Source", "sha256", "Bytes", "vs previous run"], views))
    drift = as_dict(prov.get("drift"))
    parts.append(Markup("<h3>Drift against the previous run</h3>"))
    if drift:
        parts.append(
            kv_table(
                [
                    ("Compared with retrieval at", drift.get("compared_with_retrieval")),
                    ("Changed sources", ", ".join(map(str, as_list(drift.get("changed_sources")))) or "none"),
                    ("New sources", ", ".join(map(str, as_list(drift.get("new_sources")))) or "none"),
                ]
            )
        )
    else:
        parts.append(Markup('<p class="muted">No previous provenance was compared for this run.</p>'))
    frames = []
    for name, frame in sorted(as_dict(prov.get("frames")).items()):
        frames.append((name, num(get(frame, "rows")), num(get(frame, "columns")), code(get(frame, "sha256"))))
    parts.append(Markup("<h3>Retrieved frames</h3>"))
    parts.append(table(["Frame", "Rows", "Columns", "sha256 (Parquet)"], frames))
    digests = as_dict(repo.get("definitions_sha256"))
    if digests:
        parts.append(Markup("<details><summary>Feature definition digests</summary>"))
        parts.append(table(["File", "sha256"], [(k, code(v)) for k, v in sorted(digests.items())]))
        parts.append(Markup("</details>"))
    return Markup("".join(parts))


def _section_validation(data: Loaded) -> Markup:
    validation = as_dict(data.validation)
    if not validation:
        return Markup('<p class="muted">validation.json is missing or unreadable (see the notices).</p>')
    parts = [
        kv_table(
            [
                ("Feature service", validation.get("feature_service")),
                (
                    "Overall",
                    badge(
                        validation.get("passed") if isinstance(validation.get("passed"), bool) else None,
                        "passed",
                        "FAILED",
                    ),
                ),
                ("Entity key", validation.get("entity_key")),
            ]
        )
    ]
    counts = []
    failures = []
    by_type: list[tuple[str, str, int, int]] = []
    for frame, result in sorted(as_dict(validation.get("frames")).items()):
        results = as_list(get(result, "results"))
        passed = sum(1 for r in results if get(r, "success") is True)
        failed = len(results) - passed
        counts.append(
            (
                frame,
                badge(
                    get(result, "success") if isinstance(get(result, "success"), bool) else None,
                    "passed",
                    "FAILED",
                ),
                num(len(results)),
                num(passed),
                num(failed),
                get(result, "suite_name"),
            )
        )
        tally: dict[str, list[int]] = {}
        for r in results:
            kind = str(get(r, "expectation_config", "type"))
            tally.setdefault(kind, [0, 0])[0 if get(r, "success") is True else 1] += 1
            if get(r, "success") is not True:
                kwargs = as_dict(get(r, "expectation_config", "kwargs"))
                observed = as_dict(get(r, "result"))
                shown = {
                    k: v
                    for k, v in observed.items()
                    if k
                    in ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
                }
                failures.append(
                    (
                        frame,
                        kind,
                        kwargs.get("column"),
                        get(r, "expectation_config", "severity"),
                        code(shown) if shown else get(r, "exception_info", "exception_message"),
                    )
                )
        by_type += [(frame, kind, ok, bad) for kind, (ok, bad) in sorted(tally.items())]
    parts.append(Markup("<h3>Expectations per frame</h3>"))
    parts.append(table(["Frame", "Result", "Evaluated", "Passed", "Failed", "Suite"], counts))
    parts.append(Markup("<h3>Failed expectations</h3>"))
    parts.append(table(["Frame", "Expectation", "Column", "Severity", "Observed"], failures))
    lines = as_list(get(data.provenance, "validation", "failures"))
    if lines:
        parts.append(Markup("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"))
    parts.append(Markup("<details><summary>Expectations by type</summary>"))
    parts.append(table(["Frame", "Expectation", "Passed", "Failed"], by_type))
    parts.append(Markup("</details>"))
    return Markup("".join(parts))


def _section_global(data: Loaded, bundle: Bundle) -> Markup:
    summary = as_dict(data.summary)
    parts = []
    if bundle.regular("plots/global_importance.png") is not None:
        parts.append(
            image(bundle, "plots/global_importance.png", "global importance bar chart", 640, data.digests)
        )
    glob = as_dict(summary.get("global_importance"))
    players = [p for p in as_list(glob.get("players")) if isinstance(p, dict)]
    if not summary:
        missing = '<p class="muted">summary.json is missing or unreadable (see the notices).</p>'
        return Markup(missing + "".join(parts))
    parts.append(
        Markup(
            f"<p>Statistic: {esc(glob.get('statistic'))}; instances: {num(summary.get('instances'))}; "
            f"explained output: {esc(summary.get('explained_output'))}.</p>"
        )
    )
    shown = players[:TOP_GLOBAL]
    note = f" (top {len(shown)} of {len(players)})" if len(players) > len(shown) else ""
    parts.append(Markup(f"<h3>Global importance{esc(note)}</h3>"))
    parts.append(
        table(
            ["Rank", "Feature / player", "Mean |attribution|"],
            [(i + 1, p.get("name"), num(p.get("mean_abs_attribution"))) for i, p in enumerate(shown)],
        )
    )
    modalities = as_dict(summary.get("modalities"))
    if modalities:
        parts.append(Markup("<h3>Modality shares</h3>"))
        parts.append(
            table(
                ["Modality", "Mean share of |attribution|", "Mean signed sum"],
                [
                    (m, num(get(v, "mean_abs_share")), num(get(v, "mean_sum")))
                    for m, v in sorted(modalities.items())
                ],
            )
        )
    classes = as_dict(summary.get("predicted_classes"))
    extra = [
        ("Predicted classes", ", ".join(f"{k}: {v}" for k, v in sorted(classes.items())) or None),
        ("Mean explained output", num(summary.get("mean_explained_output"))),
        ("Mean baseline", num(summary.get("mean_baseline"))),
    ]
    parts.append(kv_table(extra))
    return Markup("".join(parts))


def _top_features(record: Any) -> list[tuple[str, float]]:
    attributions = as_dict(get(record, "attributions"))
    pairs: list[tuple[str, float]] = []
    players = as_list(attributions.get("players"))
    if players:
        pairs = [
            (str(get(p, "name")), float(get(p, "attribution")))
            for p in players
            if _is_number(get(p, "attribution"))
        ]
    else:
        pairs = [
            (str(k), float(v)) for k, v in as_dict(attributions.get("features")).items() if _is_number(v)
        ]
    pairs.sort(key=lambda kv: -abs(kv[1]))
    return pairs[:TOP_FEATURES]


def _saliency_for(record: Any, stem: str, saliency: Mapping[str, str]) -> str | None:
    """The saliency PNG of an explanation, matched by names present in plots/ (never built from content)."""
    candidates = [stem]
    inference_id = get(record, "inference_id")
    if isinstance(inference_id, str):
        from include.configuration.layout import safe_key_part

        candidates += [inference_id, safe_key_part(inference_id)]
    for candidate in candidates:
        if candidate in saliency:
            return saliency[candidate]
    return None


def _section_instances(data: Loaded, bundle: Bundle, max_instances: int) -> Markup:
    if not data.explanations:
        return Markup('<p class="muted">No explanations are in this bundle.</p>')
    saliency = {
        p.rpartition("/")[2].removesuffix("_saliency.png"): p for p in bundle.files("plots", "_saliency.png")
    }
    rows = []
    for rel, record in data.explanations[:max_instances]:
        stem = rel.rpartition("/")[2].removesuffix(".json")
        prediction = as_dict(get(record, "prediction"))
        explained = as_dict(prediction.get("explained_output"))
        top = _top_features(record)
        top_html = (
            Markup(
                "<br>".join(
                    f"{esc(name)}: <span class={'pos' if value > 0 else 'neg'}>{num(value, 3)}</span>"
                    for name, value in top
                )
            )
            or None
        )
        modalities = as_dict(get(record, "attributions", "modalities"))
        shares = (
            Markup(
                "<br>".join(f"{esc(m)}: {num(get(v, 'abs_share'), 3)}" for m, v in sorted(modalities.items()))
            )
            or None
        )
        picture = _saliency_for(record, stem, saliency)
        rows.append(
            (
                Markup(
                    f'<a href="{esc(urllib.parse.quote(rel))}">{esc(get(record, "inference_id") or stem)}</a>'
                ),
                Markup(f"{esc(prediction.get('class'))} (p={fixed(prediction.get('probability'))})")
                if prediction
                else None,
                Markup(
                    f"{num(explained.get('value'), 6)}<br>"
                    f"<span class=muted>{esc(explained.get('description'))}</span>"
                )
                if explained
                else None,
                num(get(record, "baseline", "value")),
                top_html,
                shares,
                fixed(get(record, "fidelity", "score")),
                image(
                    bundle,
                    picture,
                    f"saliency map of {get(record, 'inference_id') or stem}",
                    360,
                    data.digests,
                )
                if picture
                else None,
            )
        )
    note = ""
    if len(data.explanations) > max_instances:
        note = (
            f"<p class=muted>Showing {max_instances} of {len(data.explanations)} explanations; "
            "all are in explanations/.</p>"
        )
    header = (
        f"<p>Top {TOP_FEATURES} features by |attribution| per instance; positive values raise the explained "
        "output, negative values lower it. Attributions sum to the explained output minus the baseline.</p>"
    )
    return Markup(
        header
        + table(
            [
                "Inference id",
                "Prediction",
                "Explained output",
                "Baseline",
                "Top features",
                "Modality shares (|attr|)",
                "Fidelity",
                "Saliency",
            ],
            rows,
            "instances",
        )
        + note
    )


def _section_fidelity(data: Loaded) -> Markup:
    fid = as_dict(data.fidelity)
    gate = as_dict(data.gate)
    if not fid and not gate:
        return Markup('<p class="muted">fidelity.json and fidelity_gate.json are missing or unreadable.</p>')
    previous = as_dict(gate.get("previous_bundle"))
    rows: list[tuple[str, Any]] = [
        ("Method", fid.get("method")),
        ("Metric", fid.get("metric") or gate.get("metric")),
        ("Definition", fid.get("definition")),
        ("Aggregate", f"{fid.get('aggregate_statistic') or 'aggregate'}"),
        ("Score", fixed(gate.get("score", fid.get("aggregate")))),
        ("Lowest per-instance score", fixed(fid.get("min"))),
        ("Threshold", num(gate.get("threshold"))),
        (
            "Gate decision",
            badge(
                gate.get("passed") if isinstance(gate.get("passed"), bool) else None,
                "passed: bundle published",
                "FAILED: run stopped",
            ),
        ),
        ("Previous score", fixed(gate.get("previous_score"))),
        (
            "Previous bundle",
            f"{previous.get('bundle_id')} at {previous.get('uri')}" if previous else "none (first run)",
        ),
        ("Components", code(fid.get("components")) if fid.get("components") else None),
    ]
    parts = [kv_table(rows)]
    alerts = as_list(gate.get("alerts"))
    messages = as_list(gate.get("messages"))
    parts.append(Markup("<h3>Alerts and messages</h3>"))
    alert_texts = [json.dumps(a, sort_keys=True) if isinstance(a, dict) else a for a in alerts]
    items = [Markup(f'<li class="alert">ALERT: {esc(a)}</li>') for a in alert_texts]
    items += [Markup(f"<li>{esc(m)}</li>") for m in messages]
    parts.append(Markup("<ul>" + "".join(items) + "</ul>") if items else Markup("<p class=muted>none</p>"))
    per = [p for p in as_list(fid.get("per_instance")) if isinstance(p, dict)]
    if per:
        keys = sorted({k for p in per for k in p} - {"inference_id", "score"})
        parts.append(Markup("<details><summary>Per-instance scores</summary>"))
        parts.append(
            table(
                ["Inference id", "Score", *keys],
                [
                    (p.get("inference_id"), fixed(p.get("score")), *(fixed(p.get(k)) for k in keys))
                    for p in per
                ],
            )
        )
        parts.append(Markup("</details>"))
    return Markup("".join(parts))


def _section_cost(data: Loaded) -> Markup:
    cost = as_dict(data.cost)
    summary = as_dict(cost.get("summary"))
    if not summary:
        return Markup('<p class="muted">cost.json is missing or unreadable (see the notices).</p>')
    currency = summary.get("currency")
    pricing = as_dict(summary.get("pricing"))
    within = summary.get("within_budget")
    parts = [
        kv_table(
            [
                ("Total", money(summary.get("total"), currency)),
                (
                    "Budget per run",
                    money(summary.get("budget"), currency) if summary.get("budget") is not None else "none",
                ),
                (
                    "Budget",
                    badge(
                        within if isinstance(within, bool) else None,
                        "within budget",
                        "OVER BUDGET",
                        "no budget",
                    ),
                ),
                ("Explanations", num(summary.get("explanations"))),
                ("Per 1,000 explanations", money(summary.get("cost_per_1000_explanations"), currency)),
                (
                    "Prices",
                    f"{pricing.get('source')} (effective {pricing.get('effective_date')})"
                    if pricing
                    else None,
                ),
            ]
        ),
        Markup("<h3>Per resource</h3>"),
        table(
            ["Resource", "Cost"],
            [(k, money(v, currency)) for k, v in sorted(as_dict(summary.get("per_resource")).items())],
        ),
    ]
    rows = []
    for row in as_list(cost.get("rows")):
        r = as_dict(row)
        rows.append(
            (
                r.get("x_Resource") or r.get("ResourceType"),
                r.get("x_Shard"),
                num(r.get("x_UsageQuantity")),
                num(r.get("x_RequestQuantity")),
                Markup(f"{num(r.get('ConsumedQuantity'))} {esc(r.get('ConsumedUnit'))}"),
                money(r.get("ListUnitPrice"), r.get("BillingCurrency")),
                money(r.get("BilledCost"), r.get("BillingCurrency")),
                num(r.get("x_RuntimeSeconds")),
            )
        )
    parts.append(Markup("<h3>Cost rows (FinOps FOCUS)</h3>"))
    parts.append(
        table(
            [
                "Resource",
                "Shard",
                "Used",
                "Requested",
                "Billed quantity",
                "Unit price",
                "Cost",
                "Runtime (s)",
            ],
            rows,
        )
    )
    notes = as_list(summary.get("notes"))
    if notes:
        parts.append(Markup("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    return Markup("".join(parts))


def _section_retention(retention: Mapping[str, Any] | None) -> Markup:
    if not retention:
        return Markup('<p class="muted">No retention settings were given to the renderer.</p>')
    flat: list[tuple[str, Any]] = []
    _flatten("", dict(retention), flat)
    return kv_table(flat)


def _section_artifacts(inventory: Sequence[tuple[str, int, str]]) -> Markup:
    return Markup(
        "<p>Files of this bundle when the report was rendered; the signed manifest lists them again, with "
        "this report.</p>"
        + table(["File", "Bytes", "sha256"], [(p, num(s), code(d)) for p, s, d in inventory])
    )


def _log_index(bundle: Bundle) -> Markup:
    """The bundled logs (logs/index.json): every task attempt, what was redacted, what is incomplete."""
    index = bundle.json("logs/index.json", required=False)
    if index is None:
        return Markup('<p class="muted">No log index (logs/index.json) in this bundle.</p>')
    rows = []
    for item in as_list(index.get("files")):
        entry = as_dict(item)
        redactions = as_dict(entry.get("redactions"))
        rows.append(
            (
                code(entry.get("path")),
                entry.get("task_id") or entry.get("kind"),
                entry.get("attempt"),
                num(entry.get("size")),
                "yes" if entry.get("complete", True) else Markup('<span class="alert">no (see note)</span>'),
                ", ".join(f"{k}: {v}" for k, v in sorted(redactions.items())) or "none",
            )
        )
    totals = as_dict(index.get("redactions"))
    parts = [
        Markup(
            "<p>Every log of the run is in the bundle under <code>logs/</code>. Secrets were replaced by "
            "<code>***</code> before signing; the counts say how many, per kind, never what.</p>"
        ),
        table(["File", "Task", "Attempt", "Bytes", "Complete", "Redacted"], rows),
        kv_table(
            [("Redactions in total", ", ".join(f"{k}: {v}" for k, v in sorted(totals.items())) or "none")]
        ),
    ]
    notes = [n for n in as_list(index.get("notes")) if isinstance(n, str)]
    if notes:
        parts.append(Markup("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    return Markup("".join(parts))


def _section_log(bundle: Bundle) -> Markup:
    index = _log_index(bundle)
    text = bundle.text("logs/explain.log")
    if text is None:
        return Markup(
            index + '<p class="muted">logs/explain.log is missing or unreadable (see the notices).</p>'
        )
    lines = text.splitlines()
    tail = lines[-LOG_TAIL_LINES:]
    note = f"last {len(tail)} of {len(lines)} lines" if len(lines) > len(tail) else f"{len(lines)} lines"
    summary = f"<summary>logs/explain.log ({esc(note)})</summary>"
    return Markup(f"{index}<details>{summary}<pre>{esc(chr(10).join(tail))}</pre></details>")


def _section_config(data: Loaded) -> Markup:
    if data.config_text is None:
        return Markup('<p class="muted">config.yaml is missing or unreadable (see the notices).</p>')
    return Markup(f"<details><summary>config.yaml</summary><pre>{esc(data.config_text)}</pre></details>")


# --------------------------------------------------------------------------- page

# No scripts, no remote content: a second line of defence should escaping ever miss a value.
_CSP = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src 'self' file: data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1c2833; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #d5d8dc; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.3rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; width: 100%; }
th, td { border: 1px solid #d5d8dc; padding: .3rem .5rem; text-align: left; vertical-align: top; }
thead th { background: #f2f3f4; }
table.kv th { width: 16rem; background: #f8f9f9; font-weight: 600; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .82rem; word-break: break-all; }
pre { background: #f8f9f9; border: 1px solid #d5d8dc; padding: .6rem; overflow-x: auto; font-size: .8rem;
      white-space: pre-wrap; }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: .6rem; font-weight: 600;
         font-size: .85rem; }
.ok { background: #d4efdf; color: #145a32; }
.bad { background: #f5b7b1; color: #78281f; }
.na { background: #e5e7e9; color: #424949; }
.muted { color: #707b7c; }
.pos { color: #b03a2e; }
.neg { color: #1f618d; }
.alert { color: #922b21; font-weight: 600; }
.notice { background: #fef5e7; border: 1px solid #f5cba7; padding: .5rem 1rem; }
figure { margin: .3rem 0; }
figcaption { font-size: .75rem; color: #707b7c; word-break: break-all; }
img { max-width: 100%; height: auto; }
nav ol { columns: 2; }
@media print {
  details > summary { display: none; }
  a { color: inherit; text-decoration: none; }
}
"""

_PAGE = string.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="$csp">
<title>$title</title>
<style>$css</style>
</head>
<body>
<h1>$title</h1>
<p class="muted">Explainability-as-Code compliance report, rendered from the files of this bundle:
every value below is quoted from them.</p>
$notices
<nav><ol>$toc</ol></nav>
$sections
</body>
</html>
"""
)


def _load(bundle: Bundle, run: Mapping[str, Any] | None) -> tuple[Loaded, list[tuple[str, int, str]]]:
    manifest = bundle.json("manifest.json", required=False)
    run_dict = dict(run) if run is not None else as_dict(get(manifest, "run"))
    config_text = bundle.text("config.yaml")
    if config_text is None:
        bundle.notices.append("config.yaml is not in this bundle")
    config: dict[str, Any] = {}
    if config_text is not None:
        try:
            import yaml

            config = as_dict(yaml.safe_load(config_text))
        except Exception as exc:  # a malformed or hostile YAML must not stop the report
            bundle.notices.append(f"config.yaml could not be parsed: {type(exc).__name__}")
    explanations = []
    for rel in bundle.files("explanations", ".json"):
        record = bundle.json(rel)
        if record is not None:
            explanations.append((rel, record))
    inventory = bundle.inventory()
    loaded = Loaded(
        run=run_dict,
        config_text=config_text,
        config=config,
        provenance=bundle.json("provenance.json"),
        validation=bundle.json("validation.json"),
        fidelity=bundle.json("fidelity.json"),
        gate=bundle.json("fidelity_gate.json"),
        summary=bundle.json("summary.json"),
        run_summary=bundle.json("run_summary.json"),
        cost=bundle.json("cost.json"),
        explanations=explanations,
        digests={p: d for p, _, d in inventory},
    )
    return loaded, inventory


def render_report(
    bundle_dir: Path,
    *,
    run: Mapping[str, Any] | None = None,
    retention: Mapping[str, Any] | None = None,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    pdf: bool = True,
) -> Path:
    """Write ``report.html`` into ``bundle_dir`` (a staging folder, before the manifest) and return its path.

    With ``pdf`` (the default) ``report.pdf`` is written beside it, laid out from the same HTML. Should
    the PDF fail, the HTML says so in its notices and no PDF is left behind: the bundle is still published.

    ``run`` is the run dict the pipeline passes to ``build_bundle`` (identity, config digest, ...); when it
    is None the ``run`` of an existing ``manifest.json`` is used (re-rendering a downloaded bundle).
    ``retention`` is what :func:`include.compliance.retention.apply_retention` returned, if it ran.
    Missing or unreadable files are listed at the top of the report instead of failing.
    """
    root = Path(bundle_dir)
    if root.is_symlink() or not root.is_dir():
        raise NotADirectoryError(f"{root}: not a bundle folder (symlinked folders are refused)")
    bundle = Bundle(root=root.resolve(), notices=[])
    data, inventory = _load(bundle, run)
    model = _model(data)

    sections: list[tuple[str, str, Any]] = [
        ("overview", "At a glance", lambda: _section_overview(data)),
        ("model", "Model", lambda: _section_model(data)),
        ("run", "Run identity", lambda: _section_run(data)),
        ("provenance", "Data provenance", lambda: _section_provenance(data)),
        ("validation", "Data validation", lambda: _section_validation(data)),
        ("global", "Global attributions", lambda: _section_global(data, bundle)),
        ("instances", "Per-instance attributions", lambda: _section_instances(data, bundle, max_instances)),
        ("fidelity", "Fidelity of the explanations", lambda: _section_fidelity(data)),
        ("cost", "Cost", lambda: _section_cost(data)),
        ("retention", "Retention", lambda: _section_retention(retention)),
        ("articles", "EU AI Act: artifacts and provisions", lambda: _article_section(bundle)),
        ("artifacts", "Artifacts", lambda: _section_artifacts(inventory)),
        ("logs", "Logs of the run", lambda: _section_log(bundle)),
        ("config", "Configuration", lambda: _section_config(data)),
    ]
    rendered = []
    for anchor, heading, build in sections:
        try:
            body = build()
        except Exception as exc:  # unexpected shapes in untrusted files: say so, render the rest
            bundle.notices.append(f"section {heading!r} could not be rendered: {type(exc).__name__}: {exc}")
            body = Markup('<p class="alert">This section could not be rendered; see the notices above.</p>')
        rendered.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>{body}</section>')
    title = (
        f"Explanation report: {model.get('name') or 'unknown model'} version {model.get('version') or '?'}"
    )

    def page() -> str:
        notices = ""
        if bundle.notices:
            notices = (
                '<div class="notice"><strong>Notices</strong><ul>'
                + "".join(f"<li>{esc(n)}</li>" for n in bundle.notices)
                + "</ul></div>"
            )
        return _PAGE.substitute(
            csp=_CSP,  # our constant; contains no double quote
            css=_CSS,
            title=esc(title),
            notices=notices,
            toc="".join(f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h, _ in sections),
            sections="\n".join(rendered),
        )

    target = bundle.root / REPORT_NAME
    text = page()
    if pdf:
        from include.compliance.report_pdf import render_pdf

        try:
            render_pdf(bundle.root, text, title=title)
        except Exception as exc:  # the HTML report and the evidence matter more than their PDF copy
            (bundle.root / REPORT_PDF_NAME).unlink(missing_ok=True)
            bundle.notices.append(f"{REPORT_PDF_NAME} could not be produced: {type(exc).__name__}: {exc}")
            text = page()
    # Write-then-rename: a crash never leaves a half report that build_bundle would sign.
    tmp = target.with_name(f".{REPORT_NAME}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
