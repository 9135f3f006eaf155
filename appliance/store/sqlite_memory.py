"""How much memory SQLite may keep in this process: one budget, set once at start.

A process of edgebox carries two copies of SQLite: the system library behind the stdlib
`sqlite3` module (the mail, directory, mailbox-sync and hub databases) and the one apsw
is built with (the encrypted chat database and the search index). Almost all of what
either keeps is page cache: each connection keeps the pages it read or wrote, up to its
``cache_size``, and a writer's cache survives every commit. So a process's SQLite
memory grows with the databases until each writer's cache is full: in a box that has
served for months that is every cache at its size, 16 MiB for the chat database's and
the search index's writers and 2 MiB for each stdlib database's, plus readers'.

The budget makes that bound one deliberate figure per process instead of a sum of
per-connection sizes: each copy gets a share as its soft heap limit
(`sqlite3_soft_heap_limit64`). Past it, a connection that needs a page reuses the
least recently used page of its own cache instead of allocating another, so the copy's
memory stays at its share however many connections are open and however large their
``cache_size``; a connection whose cache is smaller stays at its own size. The per-
connection sizes still decide who may hold more while the budget has room. (The soft
limit is not a hard one: SQLite still allocates what a statement cannot run without,
and memory it needs briefly is returned.)

What this is not: a limit on the files' size, or on the operating system's file cache,
which keeps the databases' pages too and gives them back under pressure by itself.
"""

from __future__ import annotations

import ctypes
import logging

import apsw

log = logging.getLogger("edgebox.store")

#: The share of the budget for apsw's copy: the chat database and the search index,
#: where a page-cache miss costs a decryption as well as a read, and whose writers are
#: the ones with the larger caches. The system library's copy gets the rest.
APSW_SHARE = 3 / 4


def _system_library() -> ctypes.CDLL | None:
    """The SQLite the stdlib `sqlite3` module runs on, if it can be reached."""
    import _sqlite3

    # A symbol looked up through the module's own handle resolves in the module and in
    # the libraries it was linked with: the very copy it uses (the system library on
    # Debian, or one built into the module), never a second one loaded beside it.
    try:
        library = ctypes.CDLL(_sqlite3.__file__)
        limit = library.sqlite3_soft_heap_limit64
        used = library.sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    limit.argtypes = (ctypes.c_int64,)
    limit.restype = ctypes.c_int64
    used.restype = ctypes.c_int64
    return library


def limit_sqlite_memory(budget: int) -> dict[str, int]:
    """Cap SQLite's memory in this process at about *budget* bytes; return each share.

    0 leaves both copies without a limit (SQLite's default). The shares returned are
    those set: ``{"apsw": ..., "system": ...}``, without ``system`` where the system
    library could not be reached (then only apsw's copy is limited, and a warning says
    so).
    """
    apsw_share = int(budget * APSW_SHARE)
    shares = {"apsw": apsw_share}
    apsw.soft_heap_limit(apsw_share)
    library = _system_library()
    if library is None:
        log.warning("SQLite memory budget: the system SQLite library was not found; "
                    "only the encrypted databases are limited")  # fmt: skip
    else:
        library.sqlite3_soft_heap_limit64(budget - apsw_share)
        shares["system"] = budget - apsw_share
    return shares


def sqlite_memory_used() -> dict[str, int]:
    """Bytes each copy of SQLite holds now (``apsw``, and ``system`` where reachable)."""
    used = {"apsw": int(apsw.memory_used())}
    library = _system_library()
    if library is not None:
        used["system"] = int(library.sqlite3_memory_used())
    return used
