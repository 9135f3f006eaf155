"""The offsite backup's wire format on the hub's sync API (mutual TLS, JSON bodies).

Every route is ``POST /sync/v1/backup/<verb>``; the box is the one its client
certificate names (`Peer`), and a request that names another box (``"box"``) is
refused 403 ``wrong_box``: a box reads and writes only its own sets::

    begin   → {"set", "key_id"}
            ← {"blobs": [id...] held, "files": {path: size} of the set's upload so far,
               "pending": {object: bytes} begun but not finished,
               "escrow": {"public_key": b64 | null, "held": bool}}
    put     → {"set", "object", "offset", "data": b64, "final", "size"}
            ← {"offset": bytes the hub holds now, "complete": bool}
            or → {"set", "pieces": [{"object", "offset", "data", "final", "size"}...]}
               ← {"pieces": [{"offset", "complete"}...]}   (small objects, batched)
    commit  → {"set", "key_id", "manifest": b64, "blobs": [id...], "files": [object...]}
            ← {"set", "removed": [older sets deleted by retention]}
    escrow  → {"key_id", "wrapped"}                ← {"held": true}
    sets    → {"box"?}     ← {"sets": [{"name", "key_id", "blobs", "bytes"}]}
    objects → {"box"?, "set"}          ← {"objects": [{"object", "size"}...]}
    get     → {"box"?, "set", "object", "offset"}  ← {"data": b64, "size": whole size}
            or → {"box"?, "set", "objects": [object...]}
               ← {"pieces": [{"object", "data", "size"}...]}   (small objects whole)

Objects are ``blob/<id>``, ``data/<path>``, ``manifest`` and ``key.id``; each is a
backup file (`appliance.backup.crypto`), sent in pieces of at most `PIECE` bytes so one
request stays small on a slow line and a cut costs at most one piece. Objects of at
most `SMALL` bytes go many to a request (at most `MAX_BATCH`, `PIECE` bytes in all):
a round trip each would cost more than their bytes.
"""

from __future__ import annotations

from typing import Final

from appliance.backup.hubstore import PIECE

BEGIN_PATH: Final = "/sync/v1/backup/begin"
PUT_PATH: Final = "/sync/v1/backup/put"
COMMIT_PATH: Final = "/sync/v1/backup/commit"
ESCROW_PATH: Final = "/sync/v1/backup/escrow"
SETS_PATH: Final = "/sync/v1/backup/sets"
OBJECTS_PATH: Final = "/sync/v1/backup/objects"
GET_PATH: Final = "/sync/v1/backup/get"
#: The status stream's name (appliance.sync.status) for the offsite backup.
STREAM: Final = "backup"
#: Objects this small are sent and fetched many to a request (a 300 KB attachment is).
SMALL: Final = 512 * 1024
#: Objects in one batched put or get.
MAX_BATCH: Final = 256
#: A put's body: a piece (or a batch's pieces) in base64 and a little JSON around it.
PUT_MAX_BODY: Final = PIECE * 4 // 3 + MAX_BATCH * 256 + 64 * 1024

__all__ = [
    "BEGIN_PATH",
    "COMMIT_PATH",
    "ESCROW_PATH",
    "GET_PATH",
    "MAX_BATCH",
    "OBJECTS_PATH",
    "PIECE",
    "PUT_MAX_BODY",
    "PUT_PATH",
    "SETS_PATH",
    "SMALL",
    "STREAM",
]
