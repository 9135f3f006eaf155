"""Memory snapshots of an ``edgebox`` process, for the soak's investigation (issue 24).

Put this folder first on PYTHONPATH and set ``SOAK_MEMDUMP_DIR=DIR`` (and, to trace
allocations, ``SOAK_MEMDUMP_FRAMES=N``): a daemon thread writes, every
``SOAK_MEMDUMP_EVERY`` seconds (default 60), ``DIR/<pid>-<n>.json`` with the live
objects counted by type, and with tracing on (from the first dump), ``DIR/<pid>-<n>.trace`` (a
`tracemalloc.Snapshot` dump). A test-only tool: nothing of the box imports it, and
without the variable it does nothing.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import threading
import time
import tracemalloc


def _dump_forever(folder: str, every: float, frames: int) -> None:
    pid = os.getpid()
    for n in range(100_000):  # bounded; the process ends long before
        time.sleep(every)
        if frames and not tracemalloc.is_tracing():
            # Started after start-up (tracing the imports makes it minutes): what
            # grows later is what the diff of two snapshots shows anyway.
            tracemalloc.start(frames)
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        body = {"time": time.time(), "objects": len(gc.get_objects()),
                "by_type": dict(counts.most_common(60))}  # fmt: skip
        with open(os.path.join(folder, f"{pid}-{n:04d}.json"), "w") as out:
            json.dump(body, out)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(os.path.join(folder, f"{pid}-{n:04d}.trace"))


_folder = os.environ.get("SOAK_MEMDUMP_DIR")
if _folder:
    os.makedirs(_folder, exist_ok=True)
    _every = float(os.environ.get("SOAK_MEMDUMP_EVERY", "60"))
    _frames = int(os.environ.get("SOAK_MEMDUMP_FRAMES", "0") or 0)
    threading.Thread(target=_dump_forever, args=(_folder, _every, _frames), daemon=True).start()
