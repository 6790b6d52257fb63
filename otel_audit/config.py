"""Settings, resolved in one order: keyword arguments > ``OTEL_AUDIT_*`` environment > defaults.

Every setting is declared once in :data:`SETTINGS`; the README's configuration table
is checked against it by the test-suite, so documentation and code cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

__all__ = [
    "MODES",
    "SETTINGS",
    "AuditConfig",
    "Setting",
    "TrailSettings",
    "normalise_database_url",
    "resolve_config",
]

#: Delivery modes a trail accepts.
MODES = ("async", "durable", "sync")

#: What happens when the queue is full and the spool is full or disabled.
OVERFLOW_POLICIES = ("block", "drop_newest", "drop_oldest")

#: When the ``durable`` journal calls ``fsync``.
FSYNC_POLICIES = ("batch", "always", "never")

#: How secret-like values are replaced.
REDACT_MODES = ("mask", "hmac", "off")

#: How a recording span points back at the audit rows made in it (``audit`` events).
SPAN_BACKLINKS = ("first", "event", "off")

DEFAULT_DATABASE_URL = "sqlite:///audit.db"


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _ms_to_seconds(raw: str) -> float:
    return float(raw) / 1000.0


def _parse_names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_rules(raw: str) -> dict[str, str]:
    rules: dict[str, str] = {}
    for part in _parse_names(raw):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=MODE pairs, got {part!r}")
        rules[key.strip()] = value.strip()
    return rules


def _parse_key_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration setting: its keyword, environment variable, parser and meaning."""

    name: str
    env: str | None
    default: Any
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("url", "OTEL_AUDIT_DATABASE_URL", DEFAULT_DATABASE_URL, str,
            "SQLAlchemy URL of the store (`postgresql://` means psycopg 3)."),
    Setting("enabled", "OTEL_AUDIT_ENABLED", True, _parse_bool,
            "`false` turns recording off: `record()` returns `None`."),
    Setting("mode", "OTEL_AUDIT_MODE", "async", str,
            "`async` (queue, background writer, spool), `durable` (local journal before "
            "returning) or `sync` (commit before returning, raises)."),
    Setting("service_name", "OTEL_SERVICE_NAME", "unknown_service", str,
            "Service name stored with every record."),
    Setting("batch_size", "OTEL_AUDIT_BATCH_SIZE", 512, int,
            "Records per store transaction."),
    Setting("flush_interval", "OTEL_AUDIT_FLUSH_INTERVAL_MS", 0.2, _ms_to_seconds,
            "Longest a record waits before its batch is written (seconds as keyword, "
            "milliseconds in the environment)."),
    Setting("queue_size", "OTEL_AUDIT_QUEUE_SIZE", 65536, int,
            "Records held in memory before the queue counts as full (besides up to six "
            "batches out of it: one committing, up to four sealed behind it, one being "
            "prepared)."),
    Setting("queue_full_timeout", "OTEL_AUDIT_QUEUE_FULL_TIMEOUT_MS", 0.1, _ms_to_seconds,
            "How long `record()` waits for room in a full queue before the overflow policy "
            "applies."),
    Setting("max_record_bytes", "OTEL_AUDIT_MAX_RECORD_BYTES", 65536, int,
            "Records larger than this are truncated (noted in `context`)."),
    Setting("retry_max_backoff", "OTEL_AUDIT_RETRY_MAX_BACKOFF_MS", 30.0, _ms_to_seconds,
            "Ceiling of the exponential back-off between store retries."),
    Setting("shutdown_timeout", "OTEL_AUDIT_SHUTDOWN_TIMEOUT_MS", 10.0, _ms_to_seconds,
            "How long `shutdown()` (and interpreter exit) waits for the queue to drain."),
    Setting("auto_migrate", "OTEL_AUDIT_AUTO_MIGRATE", None, _parse_bool,
            "Create or upgrade the schema on first use (default: on for SQLite, off "
            "elsewhere; run `otel-audit migrate`)."),
    Setting("spool_dir", "OTEL_AUDIT_SPOOL_DIR", None, str,
            "Directory of the on-disk spool used while the store is down or the queue is "
            "full (default: `<db file>.otel-audit/spool` for SQLite files, else "
            "`~/.local/state/otel_audit/<store hash>/spool`)."),
    Setting("spool_max_bytes", "OTEL_AUDIT_SPOOL_MAX_BYTES", 1 << 30, int,
            "Size cap of the spool; `0` disables spooling."),
    Setting("overflow_policy", "OTEL_AUDIT_OVERFLOW_POLICY", "block", str,
            "When the queue is full and the spool is full or disabled: `block` (wait "
            "`queue_full_timeout`, then drop the new record), `drop_newest` or "
            "`drop_oldest`; always counted and logged at ERROR."),
    Setting("journal_dir", "OTEL_AUDIT_JOURNAL_DIR", None, str,
            "Directory of the `durable` mode journal (default: next to the spool, "
            "`.../journal`)."),
    Setting("fsync", "OTEL_AUDIT_FSYNC", "batch", str,
            "`durable` journal: `batch` (group commit: one fsync shared by concurrent "
            "callers), `always` (one fsync per record) or `never` (written to the OS only)."),
    Setting("mode_by_classification", "OTEL_AUDIT_MODE_BY_CLASSIFICATION", None, _parse_rules,
            "Delivery mode per data classification, e.g. `restricted=sync` (fail-closed); "
            "`NAME=MODE,...` in the environment."),
    Setting("mode_by_action", "OTEL_AUDIT_MODE_BY_ACTION", None, _parse_rules,
            "Delivery mode per action, e.g. `DELETE=durable`."),
    Setting("redact", "OTEL_AUDIT_REDACT", "mask", str,
            "Secret-like keys in `old_values`/`new_values`/`changes`/`context`: `mask` "
            "(`[REDACTED]`), `hmac` (keyed HMAC-SHA256, comparable) or `off`."),
    Setting("redact_keys", "OTEL_AUDIT_REDACT_KEYS", (), _parse_names,
            "Extra secret-like key names (comma-separated in the environment)."),
    Setting("redact_allow", "OTEL_AUDIT_REDACT_ALLOW", (), _parse_names,
            "Key names never redacted even when they look secret (e.g. `token_count`)."),
    Setting("redact_hmac_key", "OTEL_AUDIT_REDACT_HMAC_KEY", None, str,
            "Key of `redact=hmac` (required in that mode)."),
    Setting("emit_otel_logs", "OTEL_AUDIT_EMIT_OTEL_LOGS", False, _parse_bool,
            "Also emit every written record as an OpenTelemetry log record (event name "
            "`audit`) through the `LoggerProvider`, after redaction and normalisation."),
    Setting("span_backlink", "OTEL_AUDIT_SPAN_BACKLINK", "first", str,
            "How a recording span points back at the audit rows `record()` makes in it: "
            "`first` (one `audit` event with `audit.record_id` for the span's first record; "
            "its trace and span IDs select the rest), `event` (one per record) or `off`."),
    Setting("archive_dir", "OTEL_AUDIT_ARCHIVE_DIR", None, str,
            "Directory of the retention's Parquet archives; `AuditAnalytics` and the CLI "
            "query them together with the live store."),
    Setting("trace_url", "OTEL_AUDIT_TRACE_URL", None, str,
            "Link template to a trace viewer (Jaeger, Grafana Tempo) with `{trace_id}`, "
            "rendered next to trace IDs in CLI output and notebooks."),
    Setting("chain_stream", "OTEL_AUDIT_STREAM", None, str,
            "Name of this writer's hash chain; unset: a new `service@host:pid:random` "
            "stream per process. A named stream resumes after its last stored record "
            "(one writer per name)."),
    Setting("hmac_key", "OTEL_AUDIT_HMAC_KEY", None, str,
            "Key of each record's `mac` (HMAC-SHA256 of its public SHA-256 hash; unset: "
            "no `mac`). The chain verifies without it against the signed seals; with it "
            "`verify` also checks every `mac`, which an attacker without the key cannot "
            "forge, also after the newest seal. Rows sealed before format 3 hash with it."),
    Setting("signing_key", "OTEL_AUDIT_SIGNING_KEY", None, str,
            "Ed25519 private key signing checkpoints: a file path, PKCS#8 PEM, or a "
            "64-hex raw seed (`otel-audit checkpoint --new-key` makes one)."),
    Setting("checkpoint_every", "OTEL_AUDIT_CHECKPOINT_EVERY", 10000, int,
            "Write a checkpoint of this writer's chain every N records (`0`: only "
            "`otel-audit checkpoint`)."),
    Setting("seal_interval", "OTEL_AUDIT_SEAL_INTERVAL_MS", 60.0, _ms_to_seconds,
            "While the trail writes, seal its chain's head (a signed digest, chained to the "
            "previous one) at most this often, and always at shutdown (seconds as keyword, "
            "milliseconds in the environment; `0`: only at shutdown)."),
    Setting("personal_keys", "OTEL_AUDIT_PERSONAL_KEYS", ("email", "ip_address", "phone"),
            _parse_key_list,
            "Keys in JSON values holding personal data: chained through a salted digest "
            "so `otel-audit forget` can erase them (comma-separated in the environment)."),
    Setting("console_users", "OTEL_AUDIT_CONSOLE_USERS", None, str,
            "Audit console users: a TOML/JSON file (or the JSON itself) of name, role "
            "(`auditor`/`admin`), teams and token_sha256 (`otel-audit ui --hash-token`)."),
    Setting("console_secret", "OTEL_AUDIT_CONSOLE_SECRET", None, str,
            "Key signing the audit console's session cookies (unset: a random key per "
            "process, so sessions end when the console restarts)."),
    Setting("console_export_max_rows", "OTEL_AUDIT_CONSOLE_EXPORT_MAX_ROWS", 100000, int,
            "Most rows one audit console export (CSV, JSON lines, Parquet) streams."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Resolved settings of one trail. Build it with :func:`resolve_config`."""

    url: str = DEFAULT_DATABASE_URL
    enabled: bool = True
    mode: str = "async"
    service_name: str = "unknown_service"
    batch_size: int = 512
    flush_interval: float = 0.2
    queue_size: int = 65536
    queue_full_timeout: float = 0.1
    max_record_bytes: int = 65536
    retry_max_backoff: float = 30.0
    shutdown_timeout: float = 10.0
    auto_migrate: bool | None = None
    spool_dir: str | None = None
    spool_max_bytes: int = 1 << 30
    overflow_policy: str = "block"
    journal_dir: str | None = None
    fsync: str = "batch"
    mode_by_classification: Mapping[str, str] | None = None
    mode_by_action: Mapping[str, str] | None = None
    redact: str = "mask"
    redact_keys: tuple[str, ...] = ()
    redact_allow: tuple[str, ...] = ()
    redact_hmac_key: str | None = None
    emit_otel_logs: bool = False
    span_backlink: str = "first"
    archive_dir: str | None = None
    trace_url: str | None = None
    chain_stream: str | None = None
    hmac_key: str | None = None
    signing_key: str | None = None
    checkpoint_every: int = 10000
    seal_interval: float = 60.0
    personal_keys: tuple[str, ...] = ("email", "ip_address", "phone")
    console_users: str | None = None
    console_secret: str | None = None
    console_export_max_rows: int = 100000

    def replace(self, **changes: Any) -> AuditConfig:
        """Return a copy with ``changes`` applied and validated."""
        return _validated(dataclasses.replace(self, **changes))


class TrailSettings(TypedDict, total=False):
    """The settings ``AuditTrail(...)`` and ``configure(...)`` take as keyword arguments.

    One key per :data:`SETTINGS` entry but ``url`` (the first positional argument;
    ``tests/test_config.py`` keeps the two equal), typed so a type checker catches a
    misspelt or mistyped setting; ``None`` leaves a setting to the environment, then
    the default.
    """

    enabled: bool | None
    mode: str | None
    service_name: str | None
    batch_size: int | None
    flush_interval: float | None
    queue_size: int | None
    queue_full_timeout: float | None
    max_record_bytes: int | None
    retry_max_backoff: float | None
    shutdown_timeout: float | None
    auto_migrate: bool | None
    spool_dir: str | None
    spool_max_bytes: int | None
    overflow_policy: str | None
    journal_dir: str | None
    fsync: str | None
    mode_by_classification: Mapping[str, str] | None
    mode_by_action: Mapping[str, str] | None
    redact: str | None
    redact_keys: Sequence[str] | None
    redact_allow: Sequence[str] | None
    redact_hmac_key: str | None
    emit_otel_logs: bool | None
    span_backlink: str | None
    archive_dir: str | None
    trace_url: str | None
    chain_stream: str | None
    hmac_key: str | bytes | None
    signing_key: str | None
    checkpoint_every: int | None
    seal_interval: float | None
    personal_keys: Sequence[str] | None
    console_users: str | None
    console_secret: str | None
    console_export_max_rows: int | None


def normalise_database_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://`` selects psycopg 3 (``postgresql+psycopg``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {str(url)!r}: {exc}") from exc
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AuditConfig:
    """Resolve settings: ``overrides`` (keywords; ``None`` = unset) > environment > defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in _BY_NAME:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(_BY_NAME))}")
        if value is not None:
            values[key] = value
    for setting in SETTINGS:
        if setting.name in values or setting.env is None:
            continue
        raw = env.get(setting.env)
        if raw is None or raw == "":
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={raw!r} is invalid: {exc}") from exc
    return _validated(AuditConfig(**values))


def _validated(config: AuditConfig) -> AuditConfig:
    if config.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {config.mode!r}")
    for name in ("batch_size", "queue_size", "max_record_bytes"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if config.max_record_bytes < 4096:
        raise ConfigError("max_record_bytes must be at least 4096")
    for name in ("flush_interval", "queue_full_timeout", "retry_max_backoff", "shutdown_timeout"):
        value = getattr(config, name)
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{name} must be a non-negative number of seconds; got {value!r}")
    for name, allowed in (("overflow_policy", OVERFLOW_POLICIES), ("fsync", FSYNC_POLICIES),
                          ("redact", REDACT_MODES), ("span_backlink", SPAN_BACKLINKS)):
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; "
                              f"got {getattr(config, name)!r}")
    if not isinstance(config.spool_max_bytes, int) or config.spool_max_bytes < 0:
        raise ConfigError(f"spool_max_bytes must be >= 0; got {config.spool_max_bytes!r}")
    for name in ("mode_by_classification", "mode_by_action"):
        for key, mode in (getattr(config, name) or {}).items():
            if mode not in MODES:
                raise ConfigError(f"{name}[{key!r}] must be one of {', '.join(MODES)}; "
                                  f"got {mode!r}")
    if config.redact == "hmac" and not config.redact_hmac_key:
        raise ConfigError("redact='hmac' needs redact_hmac_key")
    normalise_database_url(config.url)
    return config


def settings_table() -> str:
    """Return the README's configuration table (Markdown) for :data:`SETTINGS`."""
    lines = ["| keyword | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default is not None else "`None`"
        lines.append(f"| `{s.name}` | `{s.env}` | {default} | {s.doc} |")
    return "\n".join(lines)

