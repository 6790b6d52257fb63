"""Tamper evidence: hash chains per writer stream, signed checkpoints and seals, signed
erasures, verification.

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
from .erasures import Erasure, all_erasures, check_erasures
from .seals import Seal, all_seals, append_seal_file, load_seal_file, seal_all
from .verify import FINDING_KINDS, Finding, VerifyReport, verify_trail

__all__ = [
    "FINDING_KINDS",
    "FORMAT",
    "GENESIS_HASH",
    "PERSONAL_FIELDS",
    "ChainSealer",
    "Checkpoint",
    "Erasure",
    "Finding",
    "Seal",
    "VerifyReport",
    "all_erasures",
    "all_seals",
    "append_seal_file",
    "canonical_json",
    "chain_hash",
    "check_erasures",
    "create_checkpoints",
    "export_checkpoints",
    "latest_checkpoints",
    "load_checkpoint_file",
    "load_seal_file",
    "new_stream_name",
    "seal_all",
    "verify_trail",
]
