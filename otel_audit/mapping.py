"""The one mapping between OpenTelemetry attributes and audit record fields.

Used by every OpenTelemetry door (span processor, Logs SDK processor, OTLP ingest) and
in the other direction when audit records are emitted as OpenTelemetry log records.

=============================  ==============================================
attribute                      record field
=============================  ==============================================
``audit.action``               ``action``
``audit.resource.type``        ``resource_type``
``audit.resource.id``          ``resource_id``
``audit.resource.name``        ``resource_name``
``audit.team.id``              ``team_id``
``audit.data_classification``  ``data_classification``
``audit.requires_review``      ``requires_review``
``audit.success``              ``success``
``audit.error_message``        ``error_message``
``audit.old_values``           ``old_values`` (a map or a JSON string)
``audit.new_values``           ``new_values`` (a map or a JSON string)
``audit.changes``              ``changes`` (a map or a JSON string)
``audit.context``              ``context`` (a map or a JSON string)
``audit.acting_as``            ``acting_as``
``audit.auth.method``          ``auth_method``
``audit.delegation_chain``     ``delegation_chain`` (a list of maps or a JSON string)
``audit.request_id``           ``request_id``
``audit.record_id``            ``id`` (when re-ingesting a record emitted elsewhere)
``user.id`` / ``enduser.id``   ``user_id`` (``user.id`` wins)
``user.email``                 ``user_email``
``client.address``             ``client_ip``
``user_agent.original``        ``user_agent``
``http.request.method``        ``request_method``
``url.path`` / ``http.route``  ``request_path`` (``url.path`` wins)
``service.name`` (resource)    ``service_name``
=============================  ==============================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from .fields import FIELDS, JSON_FIELDS, field_attributes
from .record import NORMALISATION_KEY, AuditRecord

__all__ = [
    "AUDIT_EVENT_NAME",
    "FIELD_ATTRIBUTES",
    "JSON_TOO_DEEP",
    "attributes_to_fields",
    "is_audit",
    "python_attributes_to_fields",
    "record_to_attributes",
]

#: Event name (span events and log records) that marks an audit entry.
AUDIT_EVENT_NAME = "audit"

# The attribute older Logs SDKs and bridges use for the event name.
_EVENT_NAME_ATTRIBUTE = "event.name"

#: ``record field -> attribute names`` in order of preference (otel_audit.fields).
FIELD_ATTRIBUTES: dict[str, tuple[str, ...]] = field_attributes()

#: ``attribute name -> (record field, preference rank)``, the inverse of the above.
_ATTRIBUTE_FIELDS: dict[str, tuple[str, int]] = {
    name: (field, rank)
    for field, names in FIELD_ATTRIBUTES.items()
    for rank, name in enumerate(names)
}

_JSON_FIELDS = frozenset(JSON_FIELDS)
_BOOL_FIELDS = frozenset(f.name for f in FIELDS if f.kind == "bool")

#: ``attribute name -> (record field, preference rank, kind)``, kind 1 for a JSON
#: field, 2 for a flag, 0 for the rest: the one table ``attributes_to_fields`` reads.
_ATTRIBUTE_TABLE: dict[str, tuple[str, int, int]] = {
    name: (field, rank, 1 if field in _JSON_FIELDS else 2 if field in _BOOL_FIELDS else 0)
    for name, (field, rank) in _ATTRIBUTE_FIELDS.items()
}


def is_audit(attributes: Mapping[str, Any] | None, event_name: str | None = None) -> bool:
    """Whether a span, span event or log record is an audit entry.

    The one definition, shared by every door and matched exactly by the Collector's
    routing condition (``collector-config/``): the event name is ``audit`` (the log
    record's ``event_name``, passed as ``event_name``), or the ``event.name``
    attribute is ``audit`` (older SDKs and bridges carry it there), or an
    ``audit.action`` attribute holds a value (an OTLP attribute with an empty value
    counts as absent, as it does for OTTL's ``!= nil``). Names compare exactly
    (case-sensitive); the log record's body plays no part.
    """
    if event_name == AUDIT_EVENT_NAME:
        return True
    if not attributes:
        return False
    return (attributes.get(_EVENT_NAME_ATTRIBUTE) == AUDIT_EVENT_NAME
            or attributes.get("audit.action") is not None)


#: Normalisation kind noted when a JSON text nests deeper than the parser follows.
JSON_TOO_DEEP = "json_too_deep"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# one decoder for every call (``json.loads`` with an argument makes one per call)
_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_decode_json = _JSON_DECODER.decode

#: First characters of a JSON text (``NaN``/``Infinity`` are refused by the parse).
_JSON_START = frozenset('{["-0123456789tfn')


def _as_json(value: Any, field: str, notes: list[dict[str, Any]]) -> Any:
    """A JSON field's attribute value: a JSON text is its document, any other text itself.

    :func:`record_to_attributes` writes every JSON field as a JSON text, scalars included
    (``"text"`` for the string ``text``, ``5`` for the number), so any JSON text is
    parsed, not only objects and arrays: a scalar makes the round trip unchanged.
    """
    # the first character decides (after whitespace, stripped only when there is some)
    if isinstance(value, str) and (value[:1] in _JSON_START
                                   or value.lstrip()[:1] in _JSON_START):
        try:
            return _decode_json(value)
        except ValueError:
            return value  # not JSON: stored as the text it is
        except RecursionError:
            # nested deeper than Python's parser can follow: the record is kept
            # with the text as it came, and the note says why it is not a document
            notes.append({"field": field, "kind": JSON_TOO_DEEP, "stored": "text"})
            return value
    return value


def _add_notes(fields: dict[str, Any], notes: list[dict[str, Any]]) -> None:
    """Put ``notes`` under ``context["_normalised"]`` (where normalise() adds its own)."""
    context = fields.get("context")
    if isinstance(context, Mapping):
        context = dict(context)
    else:
        context = {} if context is None else {"value": context}
    prior = context.get(NORMALISATION_KEY)
    context[NORMALISATION_KEY] = ([*prior] if isinstance(prior, list) else []) + notes
    fields["context"] = context


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
    return value


_compiled_fields: Callable[..., Any] | None
try:  # the compiled twin (otel_audit/_speedups_otlp.c), identical results
    from ._accel import otlp_attributes_to_fields as _compiled_fields
except ImportError:  # not built, or the pure-Python path forced
    _compiled_fields = None

# what the compiled twin calls for the JSON texts: this decoder's scanner, which is what
# ``_decode_json`` runs between its whitespace checks
_scan_json = _JSON_DECODER.scan_once  # type: ignore[attr-defined]


def attributes_to_fields(
    attributes: Mapping[str, Any] | None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return ``build_record`` keyword arguments found in ``attributes``.

    Maps and JSON texts are both accepted for the JSON fields (a text that is not JSON
    is kept as that text); ``"true"``/``"false"``
    strings for the flags. A JSON text nested too deeply to parse stays text, noted
    under ``context["_normalised"]`` (kind ``json_too_deep``). Fields absent from the
    attributes are absent from the result. ``service_name`` comes from the resource's
    ``service.name``.

    Plain ``dict`` attributes (what the OTLP receiver decodes) go through the compiled
    twin when it is built; anything else, and whatever the twin leaves to Python (keys
    that are not ``str``, ``str`` subclasses as JSON or flag values), through
    :func:`python_attributes_to_fields`. Both give the same result.
    """
    if (_compiled_fields is not None and type(attributes) is dict
            and (resource_attributes is None or type(resource_attributes) is dict)):
        fields = _compiled_fields(attributes, resource_attributes, _ATTRIBUTE_TABLE,
                                  _scan_json, _add_notes)
        if fields is not NotImplemented:
            return cast(dict[str, Any], fields)
    return python_attributes_to_fields(attributes, resource_attributes)


def python_attributes_to_fields(
    attributes: Mapping[str, Any] | None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`attributes_to_fields` in Python: the compiled twin's original, and the
    path for any mapping (span attributes) and the pure-Python build."""
    fields: dict[str, Any] = {}
    ranks: dict[str, int] | None = None  # fields set from a non-preferred attribute
    json_fields: list[str] | None = None
    bool_fields: list[str] | None = None
    # One pass over the attributes (span attributes are BoundedAttributes, whose ``in``
    # costs a Python-level call; the span processor and the receiver run it per record).
    lookup = _ATTRIBUTE_TABLE.get
    for name, value in (attributes or {}).items():
        hit = lookup(name)
        if hit is None or value is None:
            continue
        field, rank, kind = hit
        if rank:  # an alternative name: a preferred attribute of the field wins
            if ranks is None:
                ranks = {}
            if field in fields and ranks.get(field, 0) < rank:
                continue
            ranks[field] = rank
        elif ranks and field in ranks:
            del ranks[field]
        if kind and field not in fields:
            if kind == 1:
                if json_fields is None:
                    json_fields = []
                json_fields.append(field)
            else:
                if bool_fields is None:
                    bool_fields = []
                bool_fields.append(field)
        fields[field] = value
    if json_fields is not None:
        notes: list[dict[str, Any]] = []
        if len(json_fields) > 1:
            json_fields.sort()  # notes in field order
        for field in json_fields:
            fields[field] = _as_json(fields[field], field, notes)
        if notes:
            _add_notes(fields, notes)
    if bool_fields is not None:
        for field in bool_fields:
            fields[field] = _as_bool(fields[field])
    if resource_attributes and resource_attributes.get("service.name") is not None:
        fields["service_name"] = str(resource_attributes["service.name"])
    return fields


def record_to_attributes(record: AuditRecord) -> dict[str, Any]:
    """Return OpenTelemetry attributes for ``record`` (JSON fields as JSON strings).

    The inverse of :func:`attributes_to_fields`; ``audit.record_id`` carries the ID.
    """
    attrs: dict[str, Any] = {"audit.record_id": record.id}
    for field, names in FIELD_ATTRIBUTES.items():
        value = getattr(record, field)
        if value is None:
            continue
        if field in _JSON_FIELDS:
            value = json.dumps(value, default=str, separators=(",", ":"))
        attrs[names[0]] = value
    return attrs
