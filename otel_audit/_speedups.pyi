from collections.abc import Callable
from typing import Any

def seal_plain(
    batch: list[Any],
    stream: str,
    first_seq: int,
    prev_hash: str,
    salts: str,
    dumps: Callable[..., bytes],
    option: int,
    key: bytes | None,
    fmt: str,
    json_keys: tuple[str, ...],
    prepared_type: type,
) -> list[Any]: ...

def plain_texts(
    records: list[Any],
    cap: int,
    bounded: tuple[tuple[int, int], ...],
    text_positions: tuple[int, ...],
    json_fields: tuple[tuple[str, int], ...],
    encode: Callable[[Any, int], Any],
    utc: Any,
    dumps: Callable[..., bytes] | None,
    option: int,
) -> list[dict[str, str | None]] | None: ...

def copy_text(rows: list[tuple[Any, ...]]) -> bytes: ...

def untrack(obj: Any) -> Any: ...

def snapshot(
    record: Any, atoms: frozenset[type], enum_meta: type, fallback: Callable[[Any], Any]
) -> Any: ...

def queued_copy(record: Any) -> Any: ...

def sqlite_params(rows: list[tuple[Any, ...]]) -> tuple[tuple[int, ...], list[Any]]: ...

def texts_special(texts: list[dict[str, str | None]], marks: tuple[str, ...]) -> bool: ...

def otlp_encode_logs(
    records: list[Any],
    plan: tuple[tuple[int, str, int], ...],
    positions: tuple[int, int, int, int, int, int],
    scope_name: str,
    dumps: Callable[[Any], str],
) -> bytes: ...

def redact_clean(
    records: list[Any], positions: tuple[int, ...], decisions: dict[str, bool]
) -> bool: ...

def unsealed(
    records: list[Any], texts: list[dict[str, str | None]], prepared_type: type
) -> list[Any]: ...

def custody(batch: list[Any], prepared_type: type, held: bool) -> None: ...

def merkle_extend(stack: list[bytes], size: int, hashes: list[str]) -> int: ...

def otlp_decode_logs(payload: bytes) -> list[tuple[Any, ...]] | None: ...
def otlp_attributes_to_fields(
    attributes: Any, resource_attributes: Any, table: dict[str, tuple[str, int, int]],
    scan_once: Any, add_notes: Any,
) -> Any: ...

def verify_flags(
    rows: list[tuple[Any, ...]],
    layout: int,
    plans: dict[str, tuple[bytes | None, bytes | None, tuple[int, ...], tuple[int, ...],
                          tuple[int, ...], int, int, int]],
) -> bytes: ...

def copy_rows(
    data: Any, kinds: bytes, order: tuple[int, ...]
) -> tuple[list[tuple[Any, ...]], int]: ...
