"""Kubernetes syntax rules the API server enforces and its OpenAPI schema does not.

The JSON schemas of the Kubernetes API (what ``kubernetes-validate`` checks) type a label value as
"string"; the 63-character limit and the character set are only enforced by the API server when
the pod is created. Checking them here turns a failed pod creation in the middle of a run into an
error before any pod exists.
"""

from __future__ import annotations

import hashlib
import re

# apimachinery/pkg/util/validation: IsQualifiedName / IsValidLabelValue / IsDNS1123Subdomain.
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_UNSAFE_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

LABEL_VALUE_MAX = 63
NAME_PART_MAX = 63
SUBDOMAIN_MAX = 253
# A shortened value keeps this many hex digits of the original's SHA-256, so two different values
# never share a label (e.g. run ids that differ only in characters a label cannot hold).
_DIGEST_CHARS = 10


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= SUBDOMAIN_MAX and bool(_DNS1123_SUBDOMAIN.match(value))


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label/annotation key or resource name (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"{key!r}: the prefix before '/' is empty"
    if slash and not is_dns1123_subdomain(prefix):
        return f"{key!r}: prefix {prefix!r} must be a DNS subdomain (lower case, digits, '-', '.')"
    if not name:
        return f"{key!r}: the name part is empty"
    if len(name) > NAME_PART_MAX:
        return f"{key!r}: the name part is longer than {NAME_PART_MAX} characters"
    if not _NAME_PART.match(name):
        return (
            f"{key!r}: the name part must be letters, digits, '-', '_' or '.', "
            "and start and end with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"{value!r} is longer than {LABEL_VALUE_MAX} characters"
    if not _LABEL_VALUE.match(value):
        return f"{value!r} must be letters, digits, '-', '_' or '.', and start and end with a letter or digit"
    return None


def label_safe(value: str) -> str:
    """``value`` as a valid label value: unchanged when it already is one.

    Otherwise the characters a label cannot hold become '_', and a digest of the original value is
    appended (after shortening to fit 63 characters): the mapping stays one-to-one in practice, so
    a label selector on the safe form finds exactly the pods of that value. The full value goes in
    an annotation beside the label.
    """
    if label_value_problem(value) is None:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_CHARS]
    cleaned = _UNSAFE_LABEL_CHARS.sub("_", value)
    head = cleaned[: LABEL_VALUE_MAX - _DIGEST_CHARS - 1].strip("_.-")
    return f"{head}-{digest}" if head else digest


def dns_label_safe(value: str, max_length: int = 63) -> str:
    """``value`` as a DNS-1123 label (pod names): lower case, '-' for anything else, digest when changed."""
    if is_dns1123_label(value) and len(value) <= max_length:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_CHARS]
    cleaned = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    head = cleaned[: max_length - _DIGEST_CHARS - 1].strip("-")
    return f"{head}-{digest}" if head else digest


# --- container image references -------------------------------------------------------------
# distribution/reference grammar: [host[:port]/]path-component(/path-component)*[:tag][@digest]
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")
_HOST = re.compile(
    r"^(localhost|[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)+"
    r"|\[[0-9A-Fa-f:]+\])(:[0-9]+)?$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def image_reference_problem(reference: str) -> str | None:
    """Why ``reference`` is not a pinned image reference (name with a tag or a digest), or None.

    ``latest`` (explicit or implied) is refused: it names whatever was pushed last, so two shards
    of one run, or a retry, could run different code.
    """
    ref = reference.strip()
    if not ref or ref != reference or any(c.isspace() for c in ref):
        return f"{reference!r} is not an image reference (no spaces, not empty)"
    name_and_tag, at, digest = ref.partition("@")
    if at and not _DIGEST.match(digest):
        return f"{reference!r}: digest {digest!r} must be sha256:<64 hex digits> (or sha512:<128>)"
    slash = name_and_tag.rfind("/")
    last = name_and_tag[slash + 1 :]
    tag = ""
    if ":" in last:
        last, tag = last.split(":", 1)
        name = name_and_tag[: slash + 1] + last
        if not _TAG.match(tag):
            return f"{reference!r}: tag {tag!r} is not a valid tag"
    else:
        name = name_and_tag
    parts = name.split("/")
    # The first part is a registry host when it looks like one (a dot, a port or localhost).
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if not _HOST.match(parts[0]):
            return f"{reference!r}: registry {parts[0]!r} is not a host name"
        parts = parts[1:]
    bad = [p for p in parts if not _PATH_COMPONENT.match(p)]
    if bad:
        return f"{reference!r}: {bad[0]!r} is not a valid repository name part (lower case, digits, . _ -)"
    if not tag and not digest:
        return f"{reference!r} is not pinned: add a tag (e.g. ':0.1.0') or a digest ('@sha256:...')"
    if tag == "latest" and not digest:
        return f"{reference!r}: 'latest' is not a pin (it moves); use a version tag or a digest"
    return None
