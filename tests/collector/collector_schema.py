"""Check a Collector configuration against collector-config/schema/ (the component fields).

The schema is data: a map of Go configuration structs (by their ``mapstructure`` tag
names) for the components the configurations use. :func:`check_config` walks every key
of a configuration and returns one problem per key the target version would not
accept (unknown field, wrong kind of value), each with its dotted path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "collector-config"
SCHEMA_PATH = CONFIG_DIR / "schema" / "otelcol-contrib-v0.130.0.yaml"

#: top-level sections of a Collector configuration holding components
COMPONENT_SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")

# Go's time.ParseDuration syntax (a unitless 0 is accepted too).
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
# A component or pipeline ID: type[/name].
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[^/\s]+)?$")
# ${env:NAME}, ${env:NAME:-default}, ${NAME}: resolved when the Collector loads the file.
_REFERENCE = re.compile(r"\$\{[^}]*\}")


@dataclass(frozen=True)
class Schema:
    """The loaded schema: component type -> struct name, struct name -> fields."""

    target: str
    components: Mapping[str, Mapping[str, str]]
    types: Mapping[str, Mapping[str, Any]]

    def fields(self, type_name: str) -> dict[str, str]:
        """Every field of ``type_name`` (squashed structs included): tag -> field type."""
        spec = self.types[type_name]
        out: dict[str, str] = {}
        for squashed in spec.get("squash", []):
            out.update(self.fields(squashed))
        for tag, field in (spec.get("fields") or {}).items():
            out[tag] = field["type"] if isinstance(field, Mapping) else field
        return out


def load_schema(path: Path = SCHEMA_PATH) -> Schema:
    """Load the schema file."""
    data = yaml.safe_load(path.read_text())
    return Schema(target=data["target"], components=data["components"], types=data["types"])


def component_type(component_id: str) -> str:
    """``otlphttp/audit`` -> ``otlphttp``."""
    return component_id.split("/", 1)[0]


def check_config(config: Mapping[str, Any], schema: Schema) -> list[str]:
    """Return the problems of ``config`` (empty when every key is a known field)."""
    problems: list[str] = []
    for section, body in config.items():
        if section == "service":
            problems.extend(_check(body, "service.Config", "service", schema))
            continue
        if section not in COMPONENT_SECTIONS:
            problems.append(f"{section}: not a section of a Collector configuration")
            continue
        for component_id, settings in (body or {}).items():
            kind = component_type(component_id)
            struct = schema.components.get(section, {}).get(kind)
            path = f"{section}.{component_id}"
            if struct is None:
                problems.append(f"{path}: no component type {kind!r} among the {section} "
                                f"of the schema")
                continue
            problems.extend(_check(settings, struct, path, schema))
    return problems


def _check(value: Any, field_type: str, path: str, schema: Schema) -> Iterator[str]:
    if value is None or field_type == "any":
        return  # an empty section means the component's defaults
    if isinstance(value, str) and _REFERENCE.fullmatch(value.strip()):
        return  # the whole value comes from the environment when the file is loaded
    if field_type.startswith("list[") and field_type.endswith("]"):
        if not isinstance(value, list):
            yield f"{path}: expected a list, got {type(value).__name__}"
            return
        for index, item in enumerate(value):
            yield from _check(item, field_type[5:-1], f"{path}[{index}]", schema)
        return
    if field_type.startswith("map[") and field_type.endswith("]"):
        if not isinstance(value, Mapping):
            yield f"{path}: expected a mapping, got {type(value).__name__}"
            return
        for key, item in value.items():
            yield from _check(item, field_type[4:-1], f"{path}.{key}", schema)
        return
    if field_type in schema.types:
        if not isinstance(value, Mapping):
            yield f"{path}: expected a mapping ({field_type}), got {type(value).__name__}"
            return
        fields = schema.fields(field_type)
        for key, item in value.items():
            if key not in fields:
                yield f"{path}.{key}: unknown field of {field_type}"
                continue
            yield from _check(item, fields[key], f"{path}.{key}", schema)
        return
    yield from _check_scalar(value, field_type, path)


def _check_scalar(value: Any, field_type: str, path: str) -> Iterator[str]:
    if isinstance(value, (Mapping, list)):
        yield f"{path}: expected a {field_type}, got {type(value).__name__}"
        return
    if isinstance(value, str) and _REFERENCE.search(value):
        return  # resolved at load time (embedded references such as "Bearer ${env:X}")
    if field_type == "bool":
        ok = isinstance(value, bool)
    elif field_type == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif field_type == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif field_type == "duration":
        ok = (isinstance(value, str) and bool(_DURATION.match(value))) or value == 0
    elif field_type == "id":
        ok = isinstance(value, str) and bool(_ID.match(value))
    elif field_type == "string":
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    else:
        yield f"{path}: the schema names an unknown type {field_type!r}"
        return
    if not ok:
        yield f"{path}: {value!r} is not a {field_type}"


_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Resolve ``${env:NAME}`` / ``${env:NAME:-default}`` as the Collector's env provider.

    The default applies only when NAME is *unset*; a set but empty variable gives the
    empty string (confmap/provider/envprovider provider.go: ``os.LookupEnv``, then the
    default only ``if !exists``). An unset variable without default gives ``""`` (the
    provider logs a warning and goes on).
    """

    def resolve(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        return default if default is not None else ""

    return _ENV_REFERENCE.sub(resolve, text)
