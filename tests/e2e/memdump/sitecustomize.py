"""Memory snapshots of an ``edgebox`` process, for the soak's investigation (issue 24).

Put this folder first on PYTHONPATH and set ``SOAK_MEMDUMP_DIR=DIR`` (and, to trace
allocations, ``SOAK_MEMDUMP_FRAMES=N``): a daemon thread writes, every
``SOAK_MEMDUMP_EVERY`` seconds (default 60), ``DIR/<pid>-<n>.json`` with the process's
native memory (SQLite's, glibc's heaps, RssAnon: `_native`) and the live objects counted
by type (``SOAK_MEMDUMP_OBJECTS=0`` leaves the count out: the soak samples the native
figures all along, and walking every object each time would cost CPU), and with tracing
on (from the first dump), ``DIR/<pid>-<n>.trace`` (a `tracemalloc.Snapshot` dump).
A test-only tool: nothing of the box imports it, and without the variable it does
nothing.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc


def _dump_forever(folder: str, every: float, frames: int, objects: bool) -> None:
    pid = os.getpid()
    for n in range(100_000):  # bounded; the process ends long before
        time.sleep(every)
        if frames and not tracemalloc.is_tracing():
            # Started after start-up (tracing the imports makes it minutes): what
            # grows later is what the diff of two snapshots shows anyway.
            tracemalloc.start(frames)
        body: dict[str, object] = {"time": time.time(), "native": _native()}
        if objects:
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            body.update(objects=len(gc.get_objects()), by_type=dict(counts.most_common(60)))
        wanted = [w for w in os.environ.get("SOAK_MEMDUMP_REFERRERS", "").split(",") if w]
        if wanted:
            body["referrers"] = _referrers(wanted)
        with open(os.path.join(folder, f"{pid}-{n:04d}.json"), "w") as out:
            json.dump(body, out)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(os.path.join(folder, f"{pid}-{n:04d}.trace"))


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33 `struct mallinfo2` (malloc.h): ten size_t fields.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _native() -> dict[str, int]:
    """Where the process's native memory is: SQLite's (both copies) and glibc's heaps.

    ``sqlite``: the system libsqlite3 (stdlib `sqlite3`: mail, directory, hub, sync
    state), ``apsw``: the SQLite apsw carries (encrypted chat, search index), each
    `sqlite3_memory_used` and its page cache; ``heap_*``: glibc's `mallinfo2` (in use,
    free but kept, mmapped); ``anon``: RssAnon; ``python``: tracemalloc's traced
    size when tracing.
    """
    found: dict[str, int] = {}
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")  # the copy _sqlite3 already loaded
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        found["sqlite"] = lib.sqlite3_memory_used()
        current, peak = ctypes.c_int64(), ctypes.c_int64()
        # SQLITE_STATUS_PAGECACHE_OVERFLOW = 2: page-cache bytes taken from the heap.
        lib.sqlite3_status64(2, ctypes.byref(current), ctypes.byref(peak), 0)
        found["sqlite_pagecache"] = current.value
    except (OSError, AttributeError):
        pass
    try:
        import apsw

        found["apsw"] = apsw.memory_used()
        found["apsw_pagecache"] = apsw.status(apsw.SQLITE_STATUS_PAGECACHE_OVERFLOW)[0]
    except (ImportError, AttributeError):
        pass
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        found.update(heap_arena=info.arena, heap_used=info.uordblks,
                     heap_free=info.fordblks, heap_mmap=info.hblkhd)  # fmt: skip
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                found[line.split(":")[0].lower()] = int(line.split()[1]) * 1024
    if tracemalloc.is_tracing():
        found["python"] = tracemalloc.get_traced_memory()[0]
    found["blocks"] = sys.getallocatedblocks()
    return found


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
    _objects = os.environ.get("SOAK_MEMDUMP_OBJECTS", "1") != "0"
    threading.Thread(
        target=_dump_forever, args=(_folder, _every, _frames, _objects), daemon=True
    ).start()
