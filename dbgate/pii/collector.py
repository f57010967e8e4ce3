"""Keep Python's cyclic garbage collector out of a cold plan.

Planning a statement builds its parse tree (pglast's JSON decoded: a dict or list per
node, ~800 for a 2 KB query) and drops it a moment later; none of it forms a cycle,
so reference counting frees all of it. If a collection runs meanwhile it traverses
the tree, and promotes the live nodes to older generations, where they count towards
the next *full* collection — one that traverses every object of the process. Measured
on the 2 KB benchmark query: ~150 µs of a ~700 µs cold plan, paid by whichever
statement triggers the collection. With the collector paused, the tree comes and goes
unseen. ``dbgate.policy.classify`` pauses it the same way for very long statements.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]

_lock = threading.Lock()
_pausers = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector for the block. Counted, so that concurrent planners turn it
    back on only when the last one is done, and only if it was on before the first."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                gc.enable()
