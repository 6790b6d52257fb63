"""Keys of the integrity layer: the chain's HMAC key and the Ed25519 checkpoint keys.

A key setting may be a file path, PEM text or hex; the private signing key may also be
a 32-byte raw seed in hex. Public keys are exchanged as 64 hex characters (raw Ed25519).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError

__all__ = [
    "KeyRing",
    "PublicKeys",
    "ValidKey",
    "generate_signing_key",
    "hmac_key_bytes",
    "load_key_ring",
    "load_public_key",
    "load_signing_key",
    "public_key_hex",
    "sign",
    "signature_valid",
]


def hmac_key_bytes(value: str | bytes | None) -> bytes | None:
    """The chain's HMAC key as bytes (``None``/empty: plain SHA-256)."""
    if not value:
        return None
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _material(value: str) -> str:
    """The key text: file contents when ``value`` names a file, else ``value`` itself."""
    text = value.strip()
    if "-----BEGIN" not in text and len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
        return Path(os.path.expanduser(text)).read_text().strip()
    return text


def load_signing_key(value: str | None) -> Ed25519PrivateKey | None:
    """Parse ``OTEL_AUDIT_SIGNING_KEY``: a path, PKCS#8 PEM, or a 64-hex raw seed."""
    if not value:
        return None
    text = _material(value)
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError("the signing key must be an Ed25519 private key")
            return key
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the Ed25519 signing key: {exc}") from exc


def load_public_key(value: str) -> Ed25519PublicKey:
    """Parse a public key: a path, SubjectPublicKeyInfo PEM, or 64 hex characters."""
    text = _material(value)
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError("the public key must be an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the Ed25519 public key: {exc}") from exc


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key in hex (64 characters)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def generate_signing_key() -> tuple[str, str]:
    """A new key pair as ``(private PEM, public hex)``."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, public_key_hex(key)


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    """Ed25519 signature of ``message`` in hex."""
    return key.sign(message).hex()


@dataclass(frozen=True, slots=True)
class ValidKey:
    """A public key and the period in which its signatures are accepted (UTC; open ends)."""

    key: Ed25519PublicKey
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None


class KeyRing:
    """The public keys of every signing period (key rotation): a signature verifies when
    one of the keys valid at the signed object's time made it."""

    def __init__(self, keys: Sequence[ValidKey]) -> None:
        self.keys = tuple(keys)

    def at(self, when: str | None) -> list[Ed25519PublicKey]:
        """The keys valid at ``when`` (ISO 8601; ``None``: every key)."""
        if when is None:
            return [k.key for k in self.keys]
        try:
            moment = _utc(dt.datetime.fromisoformat(when))
        except ValueError:
            return []
        return [k.key for k in self.keys
                if (k.not_before is None or moment >= k.not_before)
                and (k.not_after is None or moment < k.not_after)]


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def load_key_ring(path: str | Path) -> KeyRing:
    """Read a key file: ``{"keys": [{"public_key": HEX or PEM, "not_before": ISO or null,
    "not_after": ISO or null}, ...]}``."""
    try:
        doc = json.loads(Path(path).read_text())
        keys = [ValidKey(load_public_key(str(item["public_key"])),
                         _utc(dt.datetime.fromisoformat(item["not_before"]))
                         if item.get("not_before") else None,
                         _utc(dt.datetime.fromisoformat(item["not_after"]))
                         if item.get("not_after") else None)
                for item in doc["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from exc
    return KeyRing(keys)


#: One public key, several (keys rotated over the years: any of them may have signed), or
#: a :class:`KeyRing` (each key accepted only for objects signed in its period).
PublicKeys = Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing


def signature_valid(public: PublicKeys, message: bytes, signature: str | None,
                    when: str | None = None) -> bool:
    """Whether ``signature`` (hex) is the signature of ``message`` by ``public`` (or by one
    of the keys of a sequence, or of a key ring's keys valid at ``when``)."""
    if not signature:
        return False
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        return False
    if isinstance(public, KeyRing):
        candidates: Sequence[Ed25519PublicKey] = public.at(when)
    elif isinstance(public, Ed25519PublicKey):
        candidates = [public]
    else:
        candidates = public
    for key in candidates:
        try:
            key.verify(raw, message)
        except InvalidSignature:
            continue
        return True
    return False


def utc_text(value: Any = None) -> str:
    """A time as the UTC ISO text (microseconds) that checkpoints and seals store and sign;
    ``None`` is now, a naive time is taken as UTC, a string is parsed first."""
    if value is None:
        value = dt.datetime.now(dt.UTC)
    elif isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value.astimezone(dt.UTC).isoformat(timespec="microseconds"))
