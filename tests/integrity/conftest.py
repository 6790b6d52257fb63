"""Fixtures of the integrity tests: a chained trail on the parametrised store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from integrity_support import KEY, write_records
from sqlalchemy import Engine

from otel_audit import AuditTrail
from otel_audit.integrity.keys import generate_signing_key, load_public_key, load_signing_key
from otel_audit.store.writer import create_store_engine


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """An engine on the parametrised store."""
    eng = create_store_engine(store_url)
    yield eng
    eng.dispose()


@pytest.fixture
def chained(make_trail: Callable[..., AuditTrail]) -> AuditTrail:
    """A sync trail with an HMAC key, holding 20 chained records."""
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 20)
    return trail


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A loaded Ed25519 (private, public) key pair for signing erasures and seals."""
    pem, public = generate_signing_key()
    private = load_signing_key(pem)
    assert private is not None
    return private, load_public_key(public)
