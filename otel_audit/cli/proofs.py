"""``otel-audit prove`` and ``verify-proof``: proofs of one record, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import AuditError
from ..integrity.keys import KeyRing, PublicKeys, ValidKey, load_key_ring, load_public_key
from ._app import DbOption, app, console, err_console, fail
from .integrity import _config, _engine


@app.command()
def prove(
    record_id: Annotated[str | None, typer.Argument(
        help="The record to prove (omit with --consistency).")] = None,
    db: DbOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the proof to this file (default: standard output).")] = None,
    sealer: Annotated[str | None, typer.Option(
        "--sealer", help="Prove through this sealer's seals (default: the earliest seal "
        "of any sealer naming the record's interval; with --consistency: "
        "otel-audit-seal@HOST).")] = None,
    until: Annotated[int | None, typer.Option(
        "--until", min=1, help="End the chain of seals at this seal (default: the "
        "newest).")] = None,
    consistency: Annotated[tuple[int, int] | None, typer.Option(
        "--consistency", help="SEAL_A SEAL_B: prove that seal B of the sealer extends "
        "seal A instead.")] = None,
) -> None:
    """Write a proof that verify-proof checks with public keys and no database.

    For RECORD_ID: the record (personal values only as their digest), its audit path
    to the Merkle root a signed seal names, and the seals from that one to the newest.
    """
    from ..integrity.proofs import consistency_document, proof_document
    from ..integrity.seals import default_sealer_name

    if (record_id is None) == (consistency is None):
        raise fail("give either RECORD_ID or --consistency SEAL_A SEAL_B")
    config = _config(db)
    engine = _engine(config)
    try:
        doc: dict[str, Any]
        if consistency is not None:
            doc = consistency_document(engine, sealer or default_sealer_name(),
                                       consistency[0], consistency[1])
        else:
            assert record_id is not None
            doc = proof_document(engine, record_id, sealer=sealer, until=until)
    except AuditError as exc:
        raise fail(str(exc), 1) from exc
    finally:
        engine.dispose()
    body = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if out is None:
        print(body, end="")
    else:
        try:
            out.write_text(body)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc}") from exc
        err_console().print(f"proof written to {out}", highlight=False)


@app.command("verify-proof")
def verify_proof(
    proof: Annotated[Path, typer.Argument(help="A file written by `otel-audit prove`.")],
    public_key: Annotated[list[str] | None, typer.Option(
        "--public-key", help="The sealer's Ed25519 public key (hex, PEM or file); repeat "
        "it for rotated keys.")] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="Key file of public keys with their validity periods.")] = None,
) -> None:
    """Check a proof offline: exit 0 when it holds, 1 (with the reason) when it does not,
    2 when it cannot be checked."""
    from ..integrity.proofs import check_proof, load_proof

    try:
        public: PublicKeys
        if keys is not None:
            ring = load_key_ring(keys)
            public = KeyRing([*ring.keys, *(ValidKey(load_public_key(k))
                                            for k in public_key or [])])
        elif public_key:
            public = [load_public_key(k) for k in public_key]
        else:
            raise fail("give --public-key or --keys: a proof holds only with a signature")
        problem = check_proof(load_proof(str(proof)), public)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    if problem is not None:
        err_console().print(f"[bold red]FAILED[/] {problem}", highlight=False)
        raise typer.Exit(1)
    console().print(f"[bold green]OK[/] {proof}", highlight=False)
