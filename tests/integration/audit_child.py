"""A dbgate-like process that records audit events until it is killed (``kill -9``).

``python -m tests.integration.audit_child load DSN``: records statements as fast as
backpressure allows; every 50th is recorded durably and reported on stdout as
``durable N`` once committed — the parent kills the process mid-stream.

``python -m tests.integration.audit_child spill DSN SPILL_DIR COUNT``: buffer mode
against an unreachable database; reports ``spilled N`` once its records are in the
spill file, then waits to be killed.

Both print ``chain NAME`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from dbgate.audit.errors import AuditUnavailable
from dbgate.audit.writer import AuditWriter
from tests.integration.audit_support import fast_config, statement


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def load(dsn: str) -> None:
    w = AuditWriter(dsn, fast_config(batch_size=200), replica="child")
    await w.start()
    say(f"chain {w.chain}")
    i = 0
    while True:
        admission = w.admit()
        if admission is not None:
            await admission
        i += 1
        if i % 50 == 0:
            await w.record_durable(statement(i, identity=f"durable-{i}"))
            say(f"durable {i}")
        else:
            w.record(statement(i))
            if i % 10 == 0:
                await asyncio.sleep(0)


async def spill(dsn: str, spill_dir: str, count: int) -> None:
    w = AuditWriter(
        dsn, fast_config(on_failure="buffer", spill_dir=spill_dir, batch_size=7), replica="child"
    )
    await w.start()
    say(f"chain {w.chain}")
    assert w.available  # buffering
    for i in range(count):
        w.record(statement(i, identity="spilled"))
    with contextlib.suppress(AuditUnavailable):
        await w.flush()  # fails once the last record is in the spill file
    say(f"spilled {w.stats()['spilled']}")
    await asyncio.Event().wait()


def main() -> None:
    mode = sys.argv[1]
    if mode == "load":
        asyncio.run(load(sys.argv[2]))
    elif mode == "spill":
        asyncio.run(spill(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
