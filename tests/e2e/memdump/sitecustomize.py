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
        wanted = [w for w in os.environ.get("SOAK_MEMDUMP_REFERRERS", "").split(",") if w]
        if wanted:
            body["referrers"] = _referrers(wanted)
        with open(os.path.join(folder, f"{pid}-{n:04d}.json"), "w") as out:
            json.dump(body, out)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(os.path.join(folder, f"{pid}-{n:04d}.trace"))


def _describe(thing: object) -> str:
    name = type(thing).__qualname__
    if isinstance(thing, dict):
        keys = [str(k)[:30] for k in list(thing)[:6]]
        return f"dict{keys}"
    if type(thing).__name__ == "frame":
        code = thing.f_code  # type: ignore[attr-defined]
        return f"frame {code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}"
    return name


def _referrers(wanted: list[str]) -> dict[str, list[list[str]]]:
    """For up to 5 live objects of each wanted type: who refers to them, two levels up."""
    found: dict[str, list[list[str]]] = {}
    objects = gc.get_objects()
    for type_name in wanted:
        sample = [o for o in objects if type(o).__qualname__ == type_name][-5:]
        chains = []
        for thing in sample:
            chain = []
            for first in gc.get_referrers(thing)[:4]:
                if first is objects or first is sample:
                    continue
                above = [_describe(r) for r in gc.get_referrers(first)[:4]
                         if r is not objects and r is not sample]  # fmt: skip
                chain.append(f"{_describe(first)} <- {above}")
            chains.append(chain)
        found[type_name] = chains
    return found


_folder = os.environ.get("SOAK_MEMDUMP_DIR")
if _folder:
    os.makedirs(_folder, exist_ok=True)
    _every = float(os.environ.get("SOAK_MEMDUMP_EVERY", "60"))
    _frames = int(os.environ.get("SOAK_MEMDUMP_FRAMES", "0") or 0)
    threading.Thread(target=_dump_forever, args=(_folder, _every, _frames), daemon=True).start()
