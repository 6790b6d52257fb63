"""The archive directory's manifest and its check (``docs/integrity.md``).

Retention's ``prune`` writes Parquet files and a manifest listing each file's SHA-256 and
each run's per-stream summary (count, first and last ``seq`` and hash), signed where a key
is given; ``forget`` rewrites files and records its erasures there. The manifest's format,
signature and the check of the directory against it live here, with the rest of the
integrity checks, so :func:`otel_audit.integrity.verify.verify_trail` needs nothing from
retention.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ..analytics.duck import sql_literal
from ..errors import IntegrityError
from .canonical import FORMAT
from .walk import Finding

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .keys import PublicKeys

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "file_sha256",
    "load_manifest",
    "manifest_message",
    "save_manifest",
    "verify_archive_files",
]

#: The manifest's file name in the archive directory.
MANIFEST = "manifest.json"
#: The ``format`` member of a manifest.
MANIFEST_FORMAT = "otel-audit-archive/1"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(archive_dir: str | Path) -> dict[str, Any]:
    """The archive's manifest (an empty one when there is none yet)."""
    path = Path(archive_dir) / MANIFEST
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "runs": [], "erasures": []}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {path}: {exc}") from exc
    return doc


def manifest_message(doc: dict[str, Any]) -> bytes:
    """The signed bytes of a manifest: its canonical JSON without the signature members."""
    body = {k: v for k, v in doc.items() if k not in ("signature", "public_key")}
    return (f"{FORMAT}/manifest\n" + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                ensure_ascii=False)).encode()


def save_manifest(archive_dir: Path, doc: dict[str, Any],
                   signing_key: Ed25519PrivateKey | None = None) -> None:
    """Write the manifest atomically, signed with ``signing_key`` (else unsigned)."""
    from .keys import public_key_hex, sign

    # what verify reads back: the JSON round trip of the document
    doc = json.loads(json.dumps(doc, default=str))
    doc.pop("signature", None)
    doc.pop("public_key", None)
    if signing_key is not None:
        doc["signature"] = sign(signing_key, manifest_message(doc))
        doc["public_key"] = public_key_hex(signing_key)
    path = archive_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)



def verify_archive_files(archive_dir: str | Path, *,
                         public_key: PublicKeys | None = None,
                         require_signed: bool = False,
                         erasure_ids: set[str] | None = None,
                         ) -> tuple[list[Finding], list[Finding]]:
    """``(findings, warnings)`` about the archive directory and its manifest.

    Every file the manifest lists exists with its SHA-256 and no file is unlisted; each
    run's per-stream summary (count, first and last ``seq`` and hash) matches its files;
    each erasure the manifest lists exists in the store (``erasure_ids``); with
    ``public_key`` the manifest's signature verifies (an unsigned manifest is a warning,
    or a finding with ``require_signed``).
    """
    root = Path(archive_dir)
    manifest = load_manifest(root)
    findings: list[Finding] = []
    warnings: list[Finding] = []
    listed = set()
    if public_key is not None and (root / MANIFEST).exists():
        from .keys import signature_valid

        if not manifest.get("signature"):
            (findings if require_signed else warnings).append(Finding(
                "unsigned", None, None, None, f"{MANIFEST} is not signed"))
        elif not signature_valid(public_key, manifest_message(manifest),
                                 manifest.get("signature")):
            findings.append(Finding("bad_signature", None, None, None,
                                    f"{MANIFEST} signature does not verify"))
    for run in manifest.get("runs", []):
        present = []
        for item in run.get("files", []):
            listed.add(item["path"])
            path = root / item["path"]
            if not path.is_file():
                findings.append(Finding("archive", None, None, None,
                                        f"{item['path']} is missing"))
                continue
            present.append(path)
            if file_sha256(path) != item["sha256"]:
                findings.append(Finding("archive", None, None, None,
                                        f"{item['path']} differs from its manifest SHA-256"))
        findings.extend(_run_summaries(run, present))
    for path in sorted(root.rglob("*.parquet")):
        rel = str(path.relative_to(root))
        if rel not in listed:
            findings.append(Finding("archive", None, None, None,
                                    f"{rel} is not listed in the manifest"))
    for erasure in manifest.get("erasures", []):
        for rel in erasure.get("files", []):
            if rel not in listed:
                findings.append(Finding("archive", None, None, None,
                                        f"erasure entry names {rel}, which no run lists"))
        named = erasure.get("erasure")
        if erasure_ids is not None and named is not None and named not in erasure_ids:
            findings.append(Finding("archive", None, None, None,
                                    f"erasure {named} of the manifest is not in the store"))
    return findings, warnings


def _run_summaries(run: dict[str, Any], files: list[Path]) -> list[Finding]:
    """A run's per-stream summaries against the records of its files."""
    expected = run.get("streams") or {}
    if not files:
        return []
    names = ", ".join(sql_literal(str(p)) for p in files)
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT stream, count(*), min(seq), arg_min(hash, seq), max(seq), "
            f"arg_max(hash, seq) FROM read_parquet([{names}], union_by_name = true, "
            "hive_partitioning = false) WHERE stream IS NOT NULL GROUP BY stream").fetchall()
    except duckdb.Error as exc:
        return [Finding("archive", None, None, None,
                        f"run {run.get('run')}: cannot read its files ({exc})")]
    finally:
        con.close()
    actual = {str(r[0]): {"count": int(r[1]), "first_seq": int(r[2]), "first_hash": r[3],
                          "last_seq": int(r[4]), "last_hash": r[5]} for r in rows}
    findings = []
    for stream in sorted(set(expected) | set(actual)):
        want, got = expected.get(stream), actual.get(stream)
        if want is None or got is None or any(want.get(k) != v for k, v in got.items()):
            findings.append(Finding("archive", stream, None, None,
                                    f"run {run.get('run')}: the archived records of this stream "
                                    f"do not match the manifest's summary ({want} != {got})"))
    return findings
