"""Every list of the record's fields agrees with the one definition, otel_audit.fields."""

from __future__ import annotations

import inspect
import typing

from sqlalchemy import Boolean, DateTime, Integer, String, Text

from otel_audit import fields, mapping, record
from otel_audit.compat import AuditTrailService
from otel_audit.integrations.logging import AUDIT_FIELDS
from otel_audit.store import schema
from otel_audit.trail import ActionScope, AuditTrail, RecordFields


def test_the_record_type_has_exactly_the_fields() -> None:
    assert set(record.AuditRecord._fields) == set(fields.FIELD_NAMES)
    assert len(record.AuditRecord._fields) == len(fields.FIELD_NAMES)


def test_the_store_columns_derive_from_the_fields() -> None:
    columns = schema.audit_trails.columns
    assert schema.RECORD_COLUMNS == fields.FIELD_NAMES
    # the fields of a later layout follow the integrity columns (their migration
    # appended them), then the mac: a new store has a migrated store's column order
    first = [f for f in fields.FIELD_NAMES if f not in fields.ADDED_FIELDS]
    assert [c.name for c in columns] == [*first, *schema.CHAIN_COLUMNS[:-1],
                                         *fields.ADDED_FIELDS, "mac"]
    assert fields.ADDED_FIELDS == ("auth_method", "delegation_chain")
    kinds = {"string": String, "text": Text, "timestamp": DateTime, "bool": Boolean,
             "int": Integer}
    for spec in fields.FIELDS:
        column = columns[spec.name]
        assert column.nullable is spec.nullable, spec.name
        if spec.kind == "string":
            assert isinstance(column.type, String) and column.type.length == spec.limit
        elif spec.kind != "json":
            assert isinstance(column.type, kinds[spec.kind]), spec.name
    assert schema.PERSONAL_FIELDS == fields.PERSONAL_FIELDS
    assert set(schema.HASHED_FIELDS) | set(schema.PERSONAL_FIELDS) == set(fields.FIELD_NAMES)
    assert not set(schema.HASHED_FIELDS) & set(schema.PERSONAL_FIELDS)
    # formats 1 and 2 hash the first layout's fields, acting_as as stored
    assert set(schema.LEGACY_HASHED_FIELDS) | set(schema.LEGACY_PERSONAL_FIELDS) == (
        set(first))
    assert schema.LEGACY_PERSONAL_FIELDS == ("user_id", "user_email", "client_ip",
                                             "user_agent")
    personal = (*schema.LEGACY_PERSONAL_FIELDS, "acting_as", "delegation_chain")
    assert personal == schema.PERSONAL_FIELDS


def test_normalisation_caps_and_json_fields_are_the_fields() -> None:
    assert fields.column_limits() == record.COLUMN_LIMITS
    assert record.JSON_FIELDS == fields.JSON_FIELDS
    assert record.TEXT_FIELDS == fields.TEXT_FIELDS


def test_attribute_names_are_the_fields() -> None:
    assert fields.field_attributes() == mapping.FIELD_ATTRIBUTES


def test_what_callers_pass_is_the_caller_fields() -> None:
    assert set(typing.get_type_hints(RecordFields)) == fields.CALLER_FIELDS | {"timestamp"}
    assert ActionScope._FIELDS == fields.CALLER_FIELDS
    # the seed's logging keys: the fields, the action, and its two aliases of context
    assert fields.CALLER_FIELDS | {"action", "details", "metadata"} == AUDIT_FIELDS
    # record()'s and build_record()'s keywords: the caller fields and what build_record
    # may be handed by the integrations (trace context, service), plus the call options
    for method in (AuditTrail.record, AuditTrail.build_record):
        params = set(inspect.signature(method).parameters)
        fields_taken = params - {"self", "action", "mode", "session", "apply_policy"}
        assert fields_taken == fields.CALLER_FIELDS | {
            "timestamp", "trace_id", "span_id", "service_name"}, method.__name__


def test_the_seed_compatible_parameters_map_to_fields() -> None:
    params = set(inspect.signature(AuditTrailService.log_action).parameters)
    mapped = params - {"self", "db", "kwargs", "details", "metadata"}
    assert mapped <= fields.CALLER_FIELDS | {"action"}
    # the fields the seed's signature never had arrive through **kwargs
    assert fields.CALLER_FIELDS - mapped <= {"acting_as", "request_id", "auth_method",
                                             "delegation_chain"}
