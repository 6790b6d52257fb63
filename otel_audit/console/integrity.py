"""Integrity for the console: a record's chain position, the last verify, checkpoints."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .._internal import log_internal_error
from ..errors import AuditError
from ..record import AuditRecord
from ..store.schema import audit_trails

if TYPE_CHECKING:
    from .data import ConsoleData
    from .session import Auth, ConsoleState

__all__ = ["checkpoints_document", "integrity_summary", "record_integrity", "start_verify"]


def _key(data: ConsoleData) -> bytes | None:
    from ..integrity.keys import hmac_key_bytes

    return hmac_key_bytes(data.hmac_key)


def record_integrity(data: ConsoleData, record: AuditRecord) -> dict[str, Any]:
    """The record's chain position checked against its neighbours and latest checkpoint.

    ``state`` is ``ok`` (content matches its hash, linked both ways, at or before a
    checkpoint that agrees or after the latest one), ``broken`` (with the reasons) or
    ``unchained``.
    """
    from ..integrity.checkpoints import latest_checkpoints

    t = audit_trails.c
    with data.engine.connect() as conn:
        pos = conn.execute(select(t.stream, t.seq, t.hash, t.prev_hash)
                           .where(t.id == record.id)).first()
    if pos is None or pos.stream is None or pos.seq is None:
        return {"state": "unchained", "problems": ["the record belongs to no chain"]}
    stream, seq = pos.stream, int(pos.seq)
    source = data.chain_source()
    rows = list(source.rows(stream, seq_range=(max(seq - 1, 1), seq + 1)))
    by_seq = {int(r[1]): r for r in rows}
    problems: list[str] = []
    key = _key(data)
    mine = by_seq.get(seq)
    if mine is None or not source.content_ok(mine, key):
        problems.append("its content does not match its hash")
    before, after = by_seq.get(seq - 1), by_seq.get(seq + 1)
    if before is not None and pos.prev_hash != before[3]:
        problems.append(f"it does not link to record {seq - 1} of its stream")
    if seq > 1 and before is None:
        problems.append(f"record {seq - 1} of its stream is missing (pruned or deleted)")
    if after is not None and after[2] != pos.hash:
        problems.append(f"record {seq + 1} of its stream does not link to it")
    checkpoint = next((c for c in latest_checkpoints(data.engine) if c.stream == stream), None)
    covered = None
    if checkpoint is not None:
        covered = seq <= checkpoint.seq
        head = source.seqs_by_hash(stream, [checkpoint.hash])
        if head.get(checkpoint.hash) != checkpoint.seq:
            problems.append(f"the latest checkpoint (seq {checkpoint.seq}) does not match "
                            "the stored chain")
    return {"state": "broken" if problems else "ok", "problems": problems, "stream": stream,
            "seq": seq, "hash": pos.hash,
            "previous": before[4] if before is not None else None,
            "next": after[4] if after is not None else None,
            "checkpoint": None if checkpoint is None else {
                "seq": checkpoint.seq, "created_at": checkpoint.created_at,
                "signed": checkpoint.signature is not None, "covers_record": covered}}


def integrity_summary(state: ConsoleState, auth: Auth) -> dict[str, Any]:
    """Last verification the console ran, any running one, and the latest checkpoints."""
    from ..integrity.checkpoints import latest_checkpoints

    runs = state.verify_runs
    return {
        "last": runs.get("last"),
        "running": runs.get("running"),
        "checkpoints": [{"stream": c.stream, "seq": c.seq, "created_at": c.created_at,
                         "signed": c.signature is not None}
                        for c in latest_checkpoints(state.data.engine)],
        "can_verify": auth.viewer.is_admin,
    }


def start_verify(state: ConsoleState, auth: Auth, meta: dict[str, Any]) -> bool:
    """Start a verification in a thread (admins); ``False`` when one is running."""
    from ..integrity.verify import verify_trail

    runs = state.verify_runs
    lock = runs.setdefault("lock", threading.Lock())
    with lock:
        if runs.get("running"):
            return False
        progress: dict[str, Any] = {"started": _now(), "by": auth.user.name, "done": 0,
                                    "total": None}
        runs["running"] = progress
    state.data.audit("audit.read", auth.viewer, resource_id="verify",
                     context={"integrity": "verify"}, **meta)

    def on_total(total: int) -> None:
        progress["total"] = total

    def step(n: int) -> None:
        progress["done"] += n

    def run() -> None:
        try:
            report = verify_trail(state.data.engine, key=_key(state.data),
                                  archive_dir=state.data.archive_dir, progress=step,
                                  on_total=on_total)
            result: dict[str, Any] = {**report.to_dict(), "finished": _now(),
                                      "started": progress["started"], "by": progress["by"]}
        except (AuditError, OSError, ValueError) as exc:
            log_internal_error("console.verify", 40, "verify failed: %s", exc)
            result = {"ok": False, "error": str(exc)[:300], "finished": _now(),
                      "started": progress["started"], "by": progress["by"], "findings": []}
        with lock:
            runs["last"] = result
            runs["running"] = None

    threading.Thread(target=run, name="otel-audit-console-verify", daemon=True).start()
    return True


def checkpoints_document(state: ConsoleState) -> bytes:
    """Every stored checkpoint as the JSON a checkpoint export file holds."""
    import os
    import tempfile

    from ..integrity.checkpoints import all_checkpoints, export_checkpoints

    with tempfile.TemporaryDirectory(prefix="otel-audit-checkpoints-") as tmp:
        path = os.path.join(tmp, "checkpoints.json")
        export_checkpoints(all_checkpoints(state.data.engine), path)
        with open(path, "rb") as fh:
            body = fh.read()
    json.loads(body)  # what we hand out is the exporter's JSON, nothing else
    return body


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
