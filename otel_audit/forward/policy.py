"""Per-destination field policy: drop, mask or hash record fields before they leave.

Configured in a TOML file (``otel-audit forward --config FILE``), one table per
destination name, e.g.::

    [destinations.siem]
    drop = ["user_agent", "old_values"]
    mask = ["client_ip"]
    hash = ["user_email", "user_id"]
    hash_key_env = "FORWARD_HASH_KEY"   # or hash_key = "..." (prefer the environment)

* ``drop``: the field is sent as absent (``None``);
* ``mask``: a text field becomes ``***`` (an e-mail address keeps its domain:
  ``***@example.com``); a JSON field becomes ``"***"``;
* ``hash``: the value becomes ``hmac-sha256:<hex>`` of its text under the key (SHA-256
  without a key), so the same value always gives the same digest: hashed personal
  fields stay joinable across records and destinations sharing the key.

``id``, ``timestamp`` and ``action`` cannot be dropped or changed (the ID is the
idempotency key). A name that is no record field is a configuration error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..record import JSON_FIELDS, AuditRecord

__all__ = ["FieldPolicy", "load_policies"]

_FIXED = frozenset({"id", "timestamp", "action", "schema_version"})
_FIELDS = frozenset(AuditRecord._fields) - _FIXED
_MASK = "***"


@dataclass(frozen=True)
class FieldPolicy:
    """Which fields a destination receives dropped, masked or hashed."""

    drop: frozenset[str] = frozenset()
    mask: frozenset[str] = frozenset()
    hash: frozenset[str] = frozenset()
    hash_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for kind, done in (("drop", "dropped"), ("mask", "masked"), ("hash", "hashed")):
            unknown = set(getattr(self, kind)) - _FIELDS
            if unknown:
                raise ConfigError(f"field policy {kind}: {sorted(unknown)} cannot be "
                                  f"{done} (fields: {', '.join(sorted(_FIELDS))})")

    @property
    def is_empty(self) -> bool:
        """Whether the policy leaves every record as it is."""
        return not (self.drop or self.mask or self.hash)

    def apply(self, record: AuditRecord) -> AuditRecord:
        """Return ``record`` with the policy applied (the record itself when empty)."""
        if self.is_empty:
            return record
        changes: dict[str, Any] = {}
        for name in self.hash:
            value = getattr(record, name)
            if value is not None:
                changes[name] = self._digest(value)
        for name in self.mask:
            value = getattr(record, name)
            if value is not None:
                changes[name] = _masked(name, value)
        for name in self.drop:
            changes[name] = None if name not in ("requires_review", "success") else False
        if "user_id" in self.drop:
            changes["user_id"] = ""  # the one required text field: present, empty
        return record._replace(**changes)

    def _digest(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, separators=(",", ":"), default=str)
        data = text.encode("utf-8", "surrogatepass")
        if self.hash_key:
            return "hmac-sha256:" + hmac.new(self.hash_key, data, hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(data).hexdigest()


def _masked(name: str, value: Any) -> Any:
    if name in JSON_FIELDS:
        return _MASK
    text = str(value)
    if name == "user_email" and "@" in text:
        return _MASK + text[text.rindex("@"):]
    return _MASK


def _names(table: Mapping[str, Any], key: str, where: str) -> frozenset[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of field names")
    return frozenset(value)


def policy_from_table(table: Mapping[str, Any], where: str,
                      environ: Mapping[str, str] | None = None) -> FieldPolicy:
    """Build a :class:`FieldPolicy` from one TOML table (``where`` names it in errors)."""
    environ = os.environ if environ is None else environ
    unknown = set(table) - {"drop", "mask", "hash", "hash_key", "hash_key_env"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    key: str | None = None
    if "hash_key_env" in table:
        key = environ.get(str(table["hash_key_env"]))
        if not key:
            raise ConfigError(f"{where}.hash_key_env: {table['hash_key_env']} is not set")
    elif "hash_key" in table:
        key = str(table["hash_key"])
    return FieldPolicy(drop=_names(table, "drop", where), mask=_names(table, "mask", where),
                       hash=_names(table, "hash", where),
                       hash_key=key.encode() if key else None)


def load_policies(path: str | Path, environ: Mapping[str, str] | None = None
                  ) -> dict[str, FieldPolicy]:
    """Read the ``[destinations.NAME]`` tables of a TOML file: ``name -> FieldPolicy``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: [destinations] must be a table of destination names")
    return {name: policy_from_table(table, f"destinations.{name}", environ)
            for name, table in tables.items()}


def known_fields() -> Iterable[str]:
    """Fields a policy may name."""
    return sorted(_FIELDS)
