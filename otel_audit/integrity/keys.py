"""Keys of the integrity layer: the chain's HMAC key and the Ed25519 checkpoint keys.

A key setting may be a file path, PEM text or hex; the private signing key may also be
a 32-byte raw seed in hex. Public keys are exchanged as 64 hex characters (raw Ed25519).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError

__all__ = [
    "PublicKeys",
    "generate_signing_key",
    "hmac_key_bytes",
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


#: One public key, or several (keys rotated over the years): any of them may have signed.
PublicKeys = Ed25519PublicKey | Sequence[Ed25519PublicKey]


def signature_valid(public: PublicKeys, message: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (hex) is the signature of ``message`` by ``public`` (or by one
    of the keys of a sequence)."""
    if not signature:
        return False
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        return False
    for key in [public] if isinstance(public, Ed25519PublicKey) else public:
        try:
            key.verify(raw, message)
        except InvalidSignature:
            continue
        return True
    return False
