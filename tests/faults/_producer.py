"""Child process of the fault tests: ``_producer.py MODE URL STATE_DIR COUNT THREADS``.

``durable``: journal COUNT records, print each acknowledged ID, print DONE, then wait to
be killed. ``replay``: open the trail (adopting what dead processes left), flush, exit.
``async``: write COUNT records from THREADS threads, shut down cleanly.
"""

from __future__ import annotations

import sys
import threading

from otel_audit import AuditTrail


def main() -> None:
    mode, url, state, count, threads = sys.argv[1:6]
    n, t = int(count), int(threads)
    if mode == "durable":
        trail = AuditTrail(url, mode="durable", journal_dir=f"{state}/journal",
                           spool_dir=f"{state}/spool", fsync="batch", auto_migrate=True)
        for i in range(n):
            rec = trail.record("KILL", user_id="child", resource_id=str(i))
            assert rec is not None
            print(rec.id, flush=True)  # acknowledged: journalled before record() returned
        print("DONE", flush=True)
        threading.Event().wait()  # killed here, with records not yet in the store
    trail = AuditTrail(url, journal_dir=f"{state}/journal", spool_dir=f"{state}/spool",
                       mode="durable" if mode == "replay" else "async", auto_migrate=True)
    if mode == "replay":
        ok = trail.flush(60)
        print("FLUSHED" if ok else "NOT-FLUSHED", trail.stats(), flush=True)
        trail.shutdown(30)
        return

    def work(k: int) -> None:
        for i in range(n):
            trail.record("LOAD", user_id=f"p{k}", resource_id=str(i))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(t)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ok = trail.shutdown(60)
    print("OK" if ok else "NOT-FLUSHED", trail.stats(), flush=True)


if __name__ == "__main__":
    main()
