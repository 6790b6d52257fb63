"""``otel-audit verify``, ``checkpoint``, ``prune``, ``hold`` and ``forget``."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ..config import AuditConfig, resolve_config
from ..errors import AuditError
from ..integrity.keys import (
    KeyRing,
    PublicKeys,
    ValidKey,
    generate_signing_key,
    hmac_key_bytes,
    load_key_ring,
    load_public_key,
    load_signing_key,
)
from ._app import DbOption, app, console, err_console, fail, resolve_db
from ._output import Column, output_format, print_rows
from ._store import open_existing_store

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..trail import AuditTrail

hold_app = typer.Typer(help="Legal holds: records under a hold are never pruned.",
                       no_args_is_help=True)
app.add_typer(hold_app, name="hold")

ArchiveOption = Annotated[
    Path | None,
    typer.Option("--archive", help="Directory of the Parquet archives "
                 "[env: OTEL_AUDIT_ARCHIVE_DIR]"),
]
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who does this (recorded; default: the OS user).")]


def _config(db: str | None) -> AuditConfig:
    try:
        return resolve_config({"url": resolve_db(db)})
    except AuditError as exc:
        raise fail(str(exc)) from exc


def _engine(config: AuditConfig) -> Engine:
    try:
        return open_existing_store(config.url)  # never creates a missing store
    except AuditError as exc:
        raise fail(str(exc)) from exc


def _utc(text: str, option: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise fail(f"{option}: expected an ISO date or date-time, got {text!r}") from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _archive(archive: Path | None, config: AuditConfig) -> Path | None:
    if archive is not None:
        return archive
    return Path(config.archive_dir) if config.archive_dir else None


def _operator(by: str | None) -> str:
    if by:
        return by
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "otel-audit-cli"


def _cli_trail(config: AuditConfig) -> AuditTrail:
    from ..trail import AuditTrail

    return AuditTrail(config.url, mode="sync", service_name="otel-audit-cli")


@contextmanager
def _audited_store(config: AuditConfig) -> Iterator[tuple[Engine, AuditTrail]]:
    """The store's engine and a sync trail recording the command; errors become exits."""
    engine = _engine(config)
    trail = _cli_trail(config)
    try:
        yield engine, trail
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        trail.shutdown()
        engine.dispose()


@app.command()
def verify(
    db: DbOption = None,
    stream: Annotated[str | None, typer.Option(help="Verify only this stream.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Verify records from this date-time on (ISO 8601, UTC if no offset).")] = None,
    checkpoints: Annotated[Path | None, typer.Option(
        "--checkpoints", help="Checkpoint file written by `checkpoint --export` "
        "(detects a database rolled back to an old backup).")] = None,
    seals: Annotated[Path | None, typer.Option(
        "--seals", help="Seal file appended by `seal --export` (detects deleted seals and "
        "a database rolled back).")] = None,
    public_key: Annotated[list[str] | None, typer.Option(
        "--public-key", help="Ed25519 public key (hex, PEM or file): signatures of "
        "checkpoints, seals, erasures and the archive manifest must verify. Repeat it for "
        "rotated keys: a signature by any of them verifies.")] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="Key file of rotated public keys with their validity periods "
        '({"keys": [{"public_key": ..., "not_before": ..., "not_after": ...}]}): a '
        "signature counts only by a key valid when the object was signed.")] = None,
    require_signed: Annotated[bool, typer.Option(
        "--require-signed", help="With --public-key: an unsigned checkpoint, seal or "
        "manifest is a finding, not a warning.")] = False,
    archive: ArchiveOption = None,
    output: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    workers: Annotated[int, typer.Option(
        min=0, help="Worker processes sharing the live chains (0: one per CPU from 200,000 "
        "records on; helps only on idle cores).")] = 1,
    stream_grace: Annotated[float, typer.Option(
        "--stream-grace", help="Seconds a record may commit after its timestamp: a stream "
        "an all-streams seal does not name whose first record is dated earlier than the "
        "seal by more is `inserted` (negative: off, for records dated in the past on "
        "purpose).")] = 3600.0,
) -> None:
    """Verify chains, checkpoints, seals, erasures and archives.

    Exit status 1 on any finding, 2 when verification could not run.
    """
    from ..integrity.checkpoints import load_checkpoint_file
    from ..integrity.seals import load_seal_file
    from ..integrity.verify import verify_trail

    config = _config(db)
    engine = _engine(config)
    try:
        extra = load_checkpoint_file(checkpoints) if checkpoints is not None else []
        exported = load_seal_file(seals) if seals is not None else []
        public: PublicKeys | None = None
        if keys is not None:
            ring = load_key_ring(keys)
            given = [ValidKey(load_public_key(k)) for k in public_key or []]
            public = KeyRing([*ring.keys, *given])
        elif public_key:
            public = [load_public_key(k) for k in public_key]
        with Progress(TextColumn("[bold]verifying"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console(), transient=True,
                      disable=output == "json") as bar:
            task = bar.add_task("verify", total=None)
            report = verify_trail(
                engine, key=hmac_key_bytes(config.hmac_key), stream=stream,
                since=_utc(since, "--since") if since else None,
                archive_dir=_archive(archive, config), checkpoints=extra, public_key=public,
                progress=lambda n: bar.advance(task, n),
                on_total=lambda n: bar.update(task, total=n), workers=workers,
                seals=exported, require_signed=require_signed,
                stream_grace=stream_grace if stream_grace >= 0 else None)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        engine.dispose()
    if output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out = console()
        summary = (f"{report.records} records in {report.streams} streams, "
                   f"{report.checkpoints} checkpoints, {report.seals} seals, "
                   f"{report.archive_files} archive files"
                   + (f", {report.erased} erased" if report.erased else "")
                   + (f"; {report.macs_unchecked} MACs not checked (no HMAC key: the "
                      "public hashes were)" if report.macs_unchecked else ""))
        for w in report.warnings:
            err_console().print(f"[yellow]warning:[/] {w.kind} {w.stream or ''} "
                                f"{'' if w.seq is None else w.seq} {w.detail}",
                                highlight=False)
        if report.ok:
            out.print(f"[bold green]OK[/] {summary}")
        else:
            print_rows([Column("kind", whole=True), Column("stream", whole=True),
                        Column("seq", whole=True), Column("record", whole=True),
                        Column("detail")],
                       [(f.kind, f.stream, f.seq, f.record_id, f.detail)
                        for f in report.findings],
                       fmt=output_format(None), title=f"{len(report.findings)} findings")
            out.print(f"[bold red]FAILED[/] {summary}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def checkpoint(
    db: DbOption = None,
    export: Annotated[Path | None, typer.Option(
        "--export", help="Also write the latest checkpoint of every stream to this file.")] = None,
    new_key: Annotated[Path | None, typer.Option(
        "--new-key", help="Only create an Ed25519 key pair: private PEM to this file, "
        "public key printed.")] = None,
) -> None:
    """Checkpoint the head of every chain (signed with OTEL_AUDIT_SIGNING_KEY if set)."""
    from ..integrity.checkpoints import create_checkpoints, export_checkpoints, latest_checkpoints

    if new_key is not None:
        pem, public = generate_signing_key()
        fd = os.open(new_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pem)
        console().print(f"private key written to {new_key}; public key: {public}")
        return
    config = _config(db)
    engine = _engine(config)
    try:
        made = create_checkpoints(engine, load_signing_key(config.signing_key))
        signed = sum(1 for cp in made if cp.signature)
        console().print(f"{len(made)} checkpoints written ({signed} signed)")
        if export is not None:
            count = export_checkpoints(latest_checkpoints(engine), export)
            console().print(f"{count} checkpoints exported to {export}")
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        engine.dispose()


@app.command()
def seal(
    db: DbOption = None,
    every: Annotated[float | None, typer.Option(
        "--every", min=0.001, help="Seal every N seconds until interrupted (default: once).")
    ] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="This sealer's chain of seals (default: otel-audit-seal@HOST); one "
        "process per name.")] = None,
    export: Annotated[Path | None, typer.Option(
        "--export", help="Also append each seal as a JSON line to this file (keep it "
        "outside the database; `verify --seals FILE`).")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="With --every: stop after this many seals.")] = None,
    key: Annotated[str | None, typer.Option(
        "--key", help="The sealer's Ed25519 private key (file, PEM or hex) "
        "[default: OTEL_AUDIT_SIGNING_KEY].")] = None,
) -> None:
    """Seal the head of every stream: a signed digest chained to this sealer's last one.

    Signed with OTEL_AUDIT_SIGNING_KEY (the sealer's own key: the application need not
    hold it). Seals also when nothing changed, so the unsealed window is bounded in time.
    """
    import time

    from ..integrity.seals import append_seal_file, default_sealer_name, seal_all

    config = _config(db)
    engine = _engine(config)
    sealer = name or default_sealer_name()
    done = 0
    try:
        signing = load_signing_key(key or config.signing_key)
        while True:
            started = time.monotonic()
            made = seal_all(engine, sealer, signing)
            if export is not None:
                append_seal_file(made, export)
            done += 1
            console().print(f"seal {made.seq} of {sealer}: {len(made.head_map())} streams"
                            f"{' (signed)' if made.signature else ''}", highlight=False)
            if every is None or (count is not None and done >= count):
                break
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except AuditError as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()


@app.command()
def prune(
    before: Annotated[str, typer.Option("--before", help="Archive and delete records older "
                                        "than this date (ISO 8601, UTC).")],
    db: DbOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Move records older than --before to day-partitioned Parquet files (held ones stay)."""
    from ..integrity.keys import load_signing_key as signing
    from ..retention import prune as run_prune

    config = _config(db)
    target = _archive(archive, config)
    if target is None:
        raise fail("--archive DIR (or OTEL_AUDIT_ARCHIVE_DIR) is required")
    engine = _engine(config)
    try:
        with Progress(TextColumn("[bold]{task.description}"), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console(), transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def step(what: str, n: int) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(what, total=None)
                bar.advance(tasks[what], n)

            report = run_prune(engine, _utc(before, "--before"), target,
                               signing_key=signing(config.signing_key), progress=step)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        engine.dispose()
    console().print(f"archived {report.archived} records in {len(report.files)} files under "
                    f"{target}; deleted {report.deleted}; kept {report.held} under legal hold")


@hold_app.command("add")
def hold_add(
    db: DbOption = None,
    user: Annotated[str | None, typer.Option("--user", help="Hold this user's records.")] = None,
    resource: Annotated[str | None, typer.Option(
        "--resource", help="Hold this resource's records: ID or TYPE:ID.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Hold this team's records.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (a case number).")] = None,
    by: ByOption = None,
) -> None:
    """Place a legal hold (recorded in the trail itself)."""
    from ..retention import add_hold

    chosen = [(k, v) for k, v in (("user", user), ("resource", resource), ("team", team)) if v]
    if len(chosen) != 1:
        raise fail("give exactly one of --user, --resource, --team")
    kind, value = chosen[0]
    resource_type = None
    if kind == "resource" and ":" in value:
        resource_type, value = value.split(":", 1)
    with _audited_store(_config(db)) as (engine, trail):
        hold = add_hold(engine, kind, value, resource_type=resource_type, reason=reason,
                        created_by=_operator(by), trail=trail)
    console().print(f"hold {hold.id} placed on {kind} {value}")


@hold_app.command("list")
def hold_list(db: DbOption = None) -> None:
    """List active legal holds."""
    from ..retention import active_holds

    config = _config(db)
    engine = _engine(config)
    try:
        holds = active_holds(engine)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        engine.dispose()
    print_rows([Column("id", whole=True), Column("kind", whole=True),
                Column("value", whole=True), Column("reason"), Column("by", whole=True),
                Column("since", whole=True)],
               [(h.id, h.kind, f"{h.resource_type}:{h.value}" if h.resource_type else h.value,
                 h.reason, h.created_by, str(h.created_at)[:19]) for h in holds],
               fmt=output_format(None), title=f"{len(holds)} active holds")


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[int, typer.Argument(help="ID shown by `hold list`.")],
    db: DbOption = None,
    by: ByOption = None,
) -> None:
    """Release a legal hold (recorded in the trail)."""
    from ..retention import release_hold

    with _audited_store(_config(db)) as (engine, trail):
        done = release_hold(engine, hold_id, released_by=_operator(by), trail=trail)
    if not done:
        raise fail(f"no active hold {hold_id}", 1)
    console().print(f"hold {hold_id} released")


@app.command()
def forget(
    user: Annotated[str, typer.Option("--user", help="The subject's user ID.")],
    db: DbOption = None,
    archive: ArchiveOption = None,
    by: ByOption = None,
    email: Annotated[list[str] | None, typer.Option(
        "--email", help="An email of the subject besides those its own records hold "
        "(repeatable).")] = None,
    match_key: Annotated[list[str] | None, typer.Option(
        "--match-key", help="A JSON key whose value may name the subject, added to the "
        "defaults (repeatable; case-insensitive).")] = None,
    matchers: Annotated[Path | None, typer.Option(
        "--matchers", help="TOML or JSON file: keys = [...], resource_types = [...], "
        "replace_defaults = false (docs/integrity.md).")] = None,
    output: Annotated[str | None, typer.Option(
        "--format", help="table, csv or json (default: table on a terminal)")] = None,
) -> None:
    """Erase every personal reference to one subject from live rows and archives (GDPR
    Art. 17): its own records, and anyone's records naming it (acting_as, delegation
    chain, user_email, subject keys in JSON); prints what was erased where."""
    from ..forgetting import SubjectMatchers
    from ..retention import forget as run_forget

    fmt = output_format(output)
    config = _config(db)
    try:
        chosen = SubjectMatchers.load(matchers) if matchers is not None else SubjectMatchers()
    except AuditError as exc:
        raise fail(str(exc)) from exc
    chosen = chosen.with_keys(match_key or ())
    with _audited_store(config) as (engine, trail):
        report = run_forget(engine, user, archive_dir=_archive(archive, config),
                            erased_by=_operator(by), trail=trail,
                            signing_key=load_signing_key(config.signing_key),
                            emails=email or (), matchers=chosen)
    if fmt == "json":
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console().print(f"erased {report.live} live and {report.archived} archived records "
                    f"({len(report.files)} archive files rewritten, {report.values} values); "
                    "chains still verify"
                    + (f"; erasure {report.erasure_id}" if report.erasure_id else ""))
    rows = [(kind, name, count) for kind, counts in (
        ("column", report.by_column), ("action", report.by_action),
        ("resource_type", report.by_resource_type)) for name, count in counts.items()]
    if rows:
        print_rows([Column("by", whole=True), Column("name", whole=True),
                    Column("erased", justify="right")], rows, fmt=fmt,
                   title="values per column, records per action and resource type")
