"""Where one subject is named in a chain row, and the row with those values erased.

``otel-audit forget --user X`` erases X's personal values everywhere (``docs/integrity.md``):

* every personal value of X's own rows (``user_id`` is X, or one of X's emails), as the
  erasure always did;
* in any row: X or X's email as ``acting_as``, as a ``principal`` of the
  ``delegation_chain``, as ``user_email`` (or any personal column), and as a value under a
  *subject key* (``owner``, ``email``, ``created_by``... :class:`SubjectMatchers`) inside
  the JSON documents, and as the ``resource_id`` of a record about a ``user``.

Each erased value is a *location*: ``[column]`` or ``[column, key or index, ...]``.
:func:`erase_row` decides per location whether the row's hash covers it only through the
personal digest (*covered*: erasing keeps the digest and the hash holds) or as stored
(*direct*: an ``acting_as`` of a row sealed before layout 3, a value under a key that is
not one of the trail's ``personal_keys``). A row with a direct erasure, or keeping
personal values next to erased ones, no longer proves itself through the chain: its
erasure entry then commits to the erased row's content (``h``, :func:`content_digest`)
and to its unchanged chain hash, and the signed erasure document authenticates both.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, IntegrityError
from ..record import JSON_FIELDS
from ..store.schema import PERSONAL_FIELDS
from .canonical import (
    CHAIN_ROW_COLUMNS,
    chain_hash,
    pii_info,
    rewrite_json,
    row_version,
    seal_digest,
)
from .erased_rows import (
    ERASED,
    PRINCIPAL_KEYS,
    content_digest,
    covered_columns,
    location_text,
    personal_leftovers,
    pii_parts,
    with_values,
)

__all__ = [
    "DEFAULT_SUBJECT_KEYS",
    "DEFAULT_USER_RESOURCE_TYPES",
    "RowErasure",
    "Subject",
    "SubjectMatchers",
    "erase_row",
]

#: JSON keys whose value may name a person (compared case-insensitively).
DEFAULT_SUBJECT_KEYS: tuple[str, ...] = (
    "acting_as", "actor", "approved_by", "approver", "assignee", "created_by",
    "deleted_by", "delegated_by", "email", "impersonator", "mail", "member", "on_behalf_of",
    "owner", "owner_id", "principal", "requested_by", "requester", "reviewed_by", "reviewer",
    "subject", "updated_by", "user", "user_email", "user_id", "userid", "username",
)
#: Resource types whose ``resource_id`` is a user ID.
DEFAULT_USER_RESOURCE_TYPES: tuple[str, ...] = ("user",)

#: Columns other than the personal ones holding one principal.
_DIRECT_COLUMNS = ("acting_as",)
_POS = {name: i for i, name in enumerate(CHAIN_ROW_COLUMNS)}


@dataclass(frozen=True, slots=True)
class SubjectMatchers:
    """Which values name the subject besides its own rows' personal values.

    ``keys``: JSON keys (any depth, case-insensitive) whose string value, or list of
    strings, is compared with the subject's ID and emails. ``resource_types``: a record
    whose ``resource_type`` is one of these has a user ID as ``resource_id``.
    """

    keys: frozenset[str] = frozenset(DEFAULT_SUBJECT_KEYS)
    resource_types: frozenset[str] = frozenset(DEFAULT_USER_RESOURCE_TYPES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozenset(k.lower() for k in self.keys))

    def with_keys(self, keys: Iterable[str]) -> SubjectMatchers:
        """These matchers and more keys."""
        return SubjectMatchers(self.keys | set(keys), self.resource_types)

    @classmethod
    def load(cls, path: str | Path) -> SubjectMatchers:
        """Matchers from a TOML or JSON file: ``keys`` and ``resource_types`` (lists),
        added to the defaults unless ``replace_defaults = true``."""
        source = Path(path)
        try:
            raw = source.read_text(encoding="utf-8")
            data = json.loads(raw) if source.suffix == ".json" else tomllib.loads(raw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the matchers file {source}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of settings")
        unknown = set(data) - {"keys", "resource_types", "replace_defaults"}
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
        lists = {}
        for name in ("keys", "resource_types"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: {name} must be a list of strings")
            lists[name] = frozenset(value)
        if data.get("replace_defaults", False) is True:
            return cls(lists["keys"], lists["resource_types"])
        base = cls()
        return cls(base.keys | lists["keys"], base.resource_types | lists["resource_types"])


@dataclass(frozen=True, slots=True)
class Subject:
    """The person erased: a user ID and emails (compared case-insensitively)."""

    user_id: str
    emails: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "emails", frozenset(e.lower() for e in self.emails if e))

    def names(self, value: Any) -> bool:
        """Whether ``value`` is the subject's ID or one of its emails."""
        return isinstance(value, str) and (value == self.user_id or value.lower() in self.emails)

    def identifiers(self) -> list[str]:
        """The ID and the emails."""
        return [self.user_id, *sorted(self.emails)]


@dataclass(slots=True)
class RowErasure:
    """What :func:`erase_row` does to one chain row."""

    #: column -> new value, for every column ``forget`` writes (``id`` included)
    changes: dict[str, Any]
    #: the erasure document's entry for the row
    entry: dict[str, Any]
    #: the locations erased by this erasure
    locations: list[list[str | int]] = field(default_factory=list)
    #: the row after the erasure (chain row layout)
    row: tuple[Any, ...] = ()


#: Columns ``forget`` writes.
WRITTEN = (*PERSONAL_FIELDS, *(c for c in JSON_FIELDS if c not in PERSONAL_FIELDS),
           *(c for c in _DIRECT_COLUMNS if c not in PERSONAL_FIELDS), "resource_id",
           "pii_salt", "pii")


def _json_matches(value: Any, subject: Subject, keys: frozenset[str],
                  path: list[str | int], out: list[list[str | int]]) -> Any:
    """Replace values naming ``subject`` under ``keys`` (any depth); their paths in ``out``."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key.lower() in keys:
                if subject.names(item):
                    out.append([*path, key])
                    result[key] = ERASED
                    continue
                if isinstance(item, list):
                    replaced: list[Any] = []
                    for i, element in enumerate(item):
                        if subject.names(element):
                            out.append([*path, key, i])
                            replaced.append(ERASED)
                        else:
                            replaced.append(_json_matches(element, subject, keys,
                                                          [*path, key, i], out))
                    result[key] = replaced
                    continue
            result[key] = _json_matches(item, subject, keys, [*path, key], out)
        return result
    if isinstance(value, list):
        return [_json_matches(item, subject, keys, [*path, i], out)
                for i, item in enumerate(value)]
    return value


def _erase_keys(value: Any, keys: frozenset[str], path: list[str | int],
                out: list[list[str | int]]) -> Any:
    """Every value under a personal ``keys`` replaced by ``[erased]`` (own rows)."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key in keys:
                if item != ERASED:
                    out.append([*path, key])
                result[key] = ERASED
            else:
                result[key] = _erase_keys(item, keys, [*path, key], out)
        return result
    if isinstance(value, list):
        return [_erase_keys(item, keys, [*path, i], out) for i, item in enumerate(value)]
    return value


def _pii(keys: list[str], digest: str) -> str:
    return json.dumps({"k": keys, "d": digest} if keys else {"d": digest})


def erase_row(row: Sequence[Any], subject: Subject | None, matchers: SubjectMatchers, *,
              own: bool, previous: dict[str, Any] | None = None) -> RowErasure | None:
    """Erase ``subject``'s values from one chain row (``None``: nothing to erase).

    ``own``: the row is the subject's (every personal value the digest covers is erased;
    a personal column the row's format hashes as stored only if it names the subject).
    ``subject`` may be ``None`` with ``own`` (erase a row's personal values, nothing more).
    ``previous``: the row's entry in an earlier erasure (its locations are kept).
    """
    row_id = row[_POS["id"]]
    pii_text = row[_POS["pii"]]
    # a row of no chain (verify reports it as inserted) has no proof to keep
    chained = type(row[_POS["seq"]]) is int and None not in (row[_POS["stream"]],
                                                           row[_POS["hash"]])
    if chained and pii_text is not None and pii_info(pii_text) is None:
        raise IntegrityError(f"record {row_id} has a malformed pii value; "
                             "run `otel-audit verify`")
    keys, kept = pii_parts(row)
    digest = kept if kept is not None else seal_digest(row)
    if chained and digest is None:
        raise IntegrityError(f"record {row_id} cannot be read as sealed; run `otel-audit verify`")
    version = row_version(row)
    covered = covered_columns(row) if chained else list(PERSONAL_FIELDS)
    frozen = frozenset(keys)
    new: dict[str, Any] = {}
    found: list[list[str | int]] = []

    def rewrite(name: str, text: str, erase: frozenset[str], match: frozenset[str]) -> None:
        paths: list[list[str | int]] = []

        def transform(value: Any) -> Any:
            if erase:
                value = _erase_keys(value, erase, [name], paths)
            if subject is not None:
                value = _json_matches(value, subject, match, [name], paths)
            return value

        rewritten = rewrite_json(text, transform, version=version)
        if paths:
            new[name] = rewritten
            found.extend(paths)

    for name in PERSONAL_FIELDS:
        value = row[_POS[name]]
        if value is None or value == ERASED:
            continue
        mine = own and name in covered
        if name in JSON_FIELDS:
            principal = PRINCIPAL_KEYS.get(name)
            if mine and principal is None:
                new[name] = json.dumps(ERASED)
                found.append([name])
            else:
                rewrite(name, value, principal if mine and principal else frozenset(),
                        matchers.keys | (principal or frozenset()))
        elif mine or (subject is not None and subject.names(value)):
            new[name] = ERASED
            found.append([name])
    for name in _DIRECT_COLUMNS:
        if name not in PERSONAL_FIELDS and subject is not None \
                and subject.names(row[_POS[name]]):
            new[name] = ERASED
            found.append([name])
    if subject is not None and row[_POS["resource_type"]] in matchers.resource_types \
            and subject.names(row[_POS["resource_id"]]):
        new["resource_id"] = ERASED
        found.append(["resource_id"])
    for name in JSON_FIELDS:
        if name not in PERSONAL_FIELDS and row[_POS[name]] is not None:
            rewrite(name, row[_POS[name]], frozen if own else frozenset(), matchers.keys)
    if not found:
        return None
    if not chained or digest is None:
        final = with_values(row, new)
        loose = {"stream": row[_POS["stream"]], "seq": None, "id": row_id, "chained": False,
                 "at": found}
        return RowErasure({"id": row_id, **{n: final[_POS[n]] for n in WRITTEN}}, loose,
                          found, final)
    with_digest = {"pii": _pii(keys, digest)}
    reference = chain_hash(with_values(row, with_digest), None, canonicalise=True)
    erased = with_values(row, {**new, **with_digest})
    direct = chain_hash(erased, None, canonicalise=True) != reference
    touched = any((loc[0] in PERSONAL_FIELDS and loc[0] in covered) or (
        loc[0] not in PERSONAL_FIELDS and any(isinstance(p, str) and p in frozen
                                              for p in loc[1:])) for loc in found)
    partial = False
    if touched or kept is not None:  # the digest is kept: the values may change
        partial = bool(personal_leftovers(erased, covered))
        final = with_values(erased, {"pii_salt": os.urandom(16).hex() if partial else None})
    else:  # the digest is still computed from the salt and the values
        final = with_values(row, new)
    previous_locations = [list(p) for p in (previous or {}).get("at", [])]
    done = {location_text(p) for p in previous_locations}
    entry: dict[str, Any] = {
        "stream": row[_POS["stream"]], "seq": int(row[_POS["seq"]]), "id": row_id,
        "d": pii_parts(final)[1],
        "fields": [n for n in PERSONAL_FIELDS if final[_POS[n]] == ERASED],
        "k": keys,
        "at": previous_locations + [p for p in found if location_text(p) not in done]}
    if direct or partial or bool(previous and "h" in previous):
        entry["h"] = content_digest(final)
        entry["hash"] = row[_POS["hash"]]
    changes = {"id": row_id, **{name: final[_POS[name]] for name in WRITTEN}}
    return RowErasure(changes, entry, found, final)
