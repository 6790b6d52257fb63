"""Tamper evidence: hash chains per writer stream, signed checkpoints, verification.

See ``docs/integrity.md`` for the canonical serialisation and the threat model.
"""

from __future__ import annotations

from .canonical import FORMAT, GENESIS_HASH, PERSONAL_FIELDS, canonical_json, chain_hash
from .chain import ChainSealer, new_stream_name
from .checkpoints import (
    Checkpoint,
    create_checkpoints,
    export_checkpoints,
    latest_checkpoints,
    load_checkpoint_file,
)
from .verify import FINDING_KINDS, Finding, VerifyReport, verify_trail

__all__ = [
    "FINDING_KINDS",
    "FORMAT",
    "GENESIS_HASH",
    "PERSONAL_FIELDS",
    "ChainSealer",
    "Checkpoint",
    "Finding",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "create_checkpoints",
    "export_checkpoints",
    "latest_checkpoints",
    "load_checkpoint_file",
    "new_stream_name",
    "verify_trail",
]
