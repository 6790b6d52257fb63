"""The chain sealer's cost under format otel-audit/3, side by side in one run.

Seals the same batches of prepared records (the trail's normalised records, some with a
delegation chain) with and without an HMAC key (a key adds one 64-byte HMAC per record:
the ``mac``), through the compiled ``seal_plain`` where it is built and through the
pure-Python column path, and prints records per second and the ratios. No store: only
the sealer's CPU work, which runs on the pipeline's worker under its write lock.

    .venv/bin/python benchmarks/sealing.py [--records 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from otel_audit import _accel
from otel_audit.integrity.chain import ChainSealer
from otel_audit.prepared import PreparedRecord
from otel_audit.record import AuditRecord, normalise

_BATCH = 512


def _prepared(n: int) -> list[PreparedRecord]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        record = AuditRecord(
            id=f"0192d6a0-0000-7000-8000-{i:012d}", timestamp=base + dt.timedelta(seconds=i),
            action="UPDATE", user_id=f"user-{i % 50}", resource_type="invoice",
            resource_id=str(i), new_values={"amount": i, "status": "paid"},
            acting_as="alice" if i % 4 == 0 else None,
            auth_method="oauth2" if i % 2 else "session",
            delegation_chain=[{"principal": "alice", "via": "token-exchange"}]
            if i % 4 == 0 else None)
        out.append(PreparedRecord(*normalise(record)))
    return out


def _rate(records: list[PreparedRecord], key: bytes | None, compiled: bool) -> float:
    sealer = ChainSealer(service_name="bench", stream="bench@host:1:a", hmac_key=key)
    sealer._resumed = True
    salts = "ab" * 16 * _BATCH
    start = time.perf_counter()
    for at in range(0, len(records), _BATCH):
        batch = records[at:at + _BATCH]
        sealer._seal_columns(batch, salts[:32 * len(batch)], compiled=compiled)
    return len(records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    records = _prepared(args.records)
    paths = [("python", False)] + ([("compiled", True)] if _accel.speedups is not None else [])
    rates: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every variant alike
        for name, compiled in paths:
            for keyed in (False, True):
                rates.setdefault((name, keyed), []).append(
                    _rate(records, b"bench-key" if keyed else None, compiled))
    print(f"sealing {args.records} records, batches of {_BATCH}, median of {args.rounds}")
    for name, _compiled in paths:
        plain = statistics.median(rates[(name, False)])
        keyed = statistics.median(rates[(name, True)])
        print(f"{name:9s} no key {plain:11,.0f} rec/s   HMAC key (mac) {keyed:11,.0f} rec/s   "
              f"keyed/plain {keyed / plain:.2f}x")
    if len(paths) == 2:
        for keyed in (False, True):
            ratio = (statistics.median(rates[("compiled", keyed)])
                     / statistics.median(rates[("python", keyed)]))
            print(f"compiled/python {'keyed' if keyed else 'plain'}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
