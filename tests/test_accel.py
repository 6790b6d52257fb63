"""One accelerator switch: ``OTEL_AUDIT_PUREPYTHON=1`` forces the pure-Python paths everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json
from otel_audit import _accel, mapping, record, record_builder, trail
from otel_audit.integrity import chain, fastwalk, merkle
from otel_audit.exporters import postgres, sqlite
from otel_audit import redact
from otel_audit.pipeline import prepare
print(json.dumps({
    "pure": _accel.pure_python,
    "speedups": _accel.speedups is not None,
    "plain_texts": record._compiled_plain_texts is not None,
    "snapshot": getattr(record_builder._snapshot, "__module__", None)
    != "otel_audit.record_builder",
    "seal_plain": chain._seal_plain is not None,
    "texts_special": chain._texts_special is not None,
    "redact_clean": redact._redact_clean is not None,
    "unsealed": prepare._unsealed is not None,
    "copy_text": postgres._copy_text is not None,
    "sqlite_params": sqlite._sqlite_params is not sqlite.python_sqlite_params,
    "merkle_extend": merkle._merkle_extend is not None,
    "verify_flags": fastwalk.verify_flags is not fastwalk.python_verify_flags,
    "attributes_to_fields": mapping._compiled_fields is not None,
    "queued_copy": trail._queued_copy is not None,
}))
"""


def probe(pure: str | None) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if k != "OTEL_AUDIT_PUREPYTHON"}
    if pure is not None:
        env["OTEL_AUDIT_PUREPYTHON"] = pure
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("value", ["1", "On"])
def test_the_switch_turns_every_compiled_path_off(value: str) -> None:
    found = probe(value)
    assert found.pop("pure") is True
    assert not any(found.values()), found


def test_without_the_switch_every_built_path_is_used(speedups: object) -> None:
    found = probe(None)
    assert found.pop("pure") is False
    assert all(found.values()), found
    assert probe("0")["speedups"] is True  # only a true value forces the pure paths
