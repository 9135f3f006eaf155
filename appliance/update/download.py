"""Fetch an update bundle over HTTPS into the data partition: bounded, resumable, checked.

A thin trio layer over h11 (RFC 9112), for ``edgebox update install URL`` and for the
hub's update channel (appliance.update.follow). The bundle goes to
``update/incoming.part`` on the data partition, never to memory, and reaches RAUC only
after it is whole and, when the caller knows them, of the promised size and SHA-256
(`Expected`): the signature RAUC checks covers every byte, so a partial or damaged
download could never install, but it must not even be offered.

- **Mutual TLS.** The caller's SSL context presents the box's sync certificate and
  trusts the hub's CA only (`appliance.sync.central.central_client_context`).
- **Bounded.** A body larger than `max_size` (or than the promised size) is cut off;
  a declared Content-Length over it is refused before a byte is written.
- **Resumable.** The part file's length is where a new attempt starts: ``Range:
  bytes=N-`` (RFC 9110 §14.2). A 206 whose Content-Range starts at N is appended
  (§14.4, §15.3.7); a 200 means the server ignores ranges, so the part is started
  again; a 416 means there is nothing past N (§15.5.17): the part is checked as it
  is. ``update/incoming.json`` names what the part belongs to: a part of another URL
  or another bundle is discarded, never continued.
- **Throttled.** At most `rate` bytes a second are read; TCP's flow control slows the
  sender, so mail and chat keep the rest of a slow provincial line.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from appliance.store.files import fsync_dir, write_atomically

PART: Final = Path("update") / "incoming.part"
PART_INFO: Final = Path("update") / "incoming.json"
#: A bundle bigger than this is refused (a root slot is smaller).
MAX_BUNDLE: Final = 2 * 1024**3
_CHUNK: Final = 64 * 1024
#: Seconds without a byte before the attempt is given up (the part stays for the next).
STALL: Final = 60.0


class DownloadError(Exception):
    """The bundle was not fetched whole; the message says why, for the operator."""


class NotAsPromised(DownloadError):
    """The bundle arrived whole but is not what was promised (size or SHA-256): fetching
    it again from the same place gives the same bytes, so it is refused, not retried."""


@dataclass(frozen=True)
class Expected:
    """What the bundle must be, when the caller knows it (the hub's offer)."""

    size: int
    sha256: str


async def download(
    url: str,
    data_dir: Path,
    context: ssl.SSLContext,
    *,
    expected: Expected | None = None,
    max_size: int = MAX_BUNDLE,
    rate: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch *url* (https only) into the part file, resuming one left before; return it.

    *rate* bytes a second at most (0: no limit). *progress* hears (bytes held, total
    size, 0 while unknown). Raise `DownloadError`; a cut leaves the part for a retry,
    a part that fails its check is removed.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise DownloadError(f"only https:// URLs are fetched, not {url!r}")
    limit = min(max_size, expected.size) if expected else max_size
    part = data_dir / PART
    await trio.to_thread.run_sync(_claim_part, data_dir, url, expected)
    held = part.stat().st_size
    if held > limit:
        part.unlink()
        held = 0
    total = expected.size if expected else 0
    if not (expected and held == expected.size):
        try:
            total = await _fetch(url, parts.hostname, parts.port or 443, context, part, held,
                                 limit, rate, progress)  # fmt: skip
        except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise DownloadError(f"cannot download {url}: {type(exc).__name__}: {exc}") from None
        except trio.TooSlowError:
            raise DownloadError(f"cannot download {url}: no data for {STALL:.0f} s") from None
    if expected is not None:
        await trio.to_thread.run_sync(_check, part, expected)
    if progress is not None:
        size = part.stat().st_size
        progress(size, total or size)
    return part


def discard_part(data_dir: Path) -> None:
    """Forget the part file and what it belonged to."""
    (data_dir / PART).unlink(missing_ok=True)
    (data_dir / PART_INFO).unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (bundles are hundreds of MiB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _claim_part(data_dir: Path, url: str, expected: Expected | None) -> None:
    """Keep the part only if it belongs to this URL and bundle; else start a new one."""
    part, info = data_dir / PART, data_dir / PART_INFO
    wanted = {"url": url, "expected": asdict(expected) if expected else None}
    try:
        same = json.loads(info.read_text()) == wanted
    except (OSError, ValueError):
        same = False
    if not same or not part.exists():
        part.unlink(missing_ok=True)
        write_atomically(info, json.dumps(wanted).encode(), mode=0o644)
        part.touch(mode=0o600)
        fsync_dir(part.parent)


def _check(part: Path, expected: Expected) -> None:
    size = part.stat().st_size
    if size != expected.size:
        part.unlink()
        raise NotAsPromised(f"the bundle is {size} bytes, the hub promised {expected.size}")
    found = sha256_of(part)
    if found != expected.sha256:
        part.unlink()  # damaged: a resume would only keep the damage
        raise NotAsPromised(f"the bundle's SHA-256 is {found}, the hub promised {expected.sha256}")


async def _fetch(
    url: str, host: str, port: int, context: ssl.SSLContext, part: Path, held: int,
    limit: int, rate: int, progress: Callable[[int, int], None] | None,
) -> int:  # fmt: skip
    """One GET from *held* on; return the whole size the server named (0: unknown)."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    context.set_alpn_protocols(["http/1.1"])
    with trio.fail_after(STALL):
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", parts.netloc), ("accept", "application/octet-stream")]
        if held:
            headers.append(("range", f"bytes={held}-"))  # RFC 9110 §14.1.2
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=headers))
                              + conn.send(h11.EndOfMessage()))  # fmt: skip
        response = await _next(conn, stream)
        if not isinstance(response, h11.Response):
            raise DownloadError(f"{url}: no answer")
        fields = {n.decode("latin-1"): v.decode("latin-1") for n, v in response.headers}
        status = response.status_code
        if status == 416 and held:
            return held  # nothing past what we hold (RFC 9110 §15.5.17): check it as it is
        if status == 200:
            held = 0  # the whole body, from the start
        elif status == 206:
            start, total = _content_range(fields.get("content-range", ""))
            if start != held:
                raise DownloadError(f"{url}: asked for bytes from {held}, got from {start}")
        else:
            raise DownloadError(f"{url}: HTTP {status}")
        length = fields.get("content-length", "")
        total = held + int(length) if length.isdigit() else 0
        if status == 206 and total == 0:
            total = _content_range(fields.get("content-range", ""))[1]
        if total > limit:
            raise DownloadError(f"{url}: the bundle is {total} bytes, more than {limit} allowed")
        mode = "ab" if held else "wb"
        started = trio.current_time()
        fetched = 0
        with part.open(mode) as out:
            while True:
                event = await _next(conn, stream)
                if isinstance(event, h11.Data):
                    held += len(event.data)
                    fetched += len(event.data)
                    if held > limit:
                        raise DownloadError(f"{url}: the bundle is larger than {limit} bytes")
                    out.write(event.data)
                    if progress is not None:
                        progress(held, total)
                    if rate:
                        # Ahead of the allowance: wait until the average is back at rate.
                        due = started + fetched / rate
                        await trio.sleep_until(due)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise DownloadError(f"{url}: the connection ended mid-bundle")
            out.flush()
            os.fsync(out.fileno())
        return total or held


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(STALL):
            data = await stream.receive_some(_CHUNK)
        conn.receive_data(bytes(data))


def _content_range(value: str) -> tuple[int, int]:
    """``bytes START-END/TOTAL`` → (START, TOTAL); TOTAL 0 when "*" (RFC 9110 §14.4)."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first = span.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        raise DownloadError(f"unreadable Content-Range {value!r}")
    return int(first), int(total) if total.isdigit() else 0
