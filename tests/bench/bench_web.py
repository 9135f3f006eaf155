"""Webmail benchmark: server time of the inbox page, beside a webmail's work on Dovecot.

The issue's target: the server renders the inbox page of a 10,000-message folder in
under 300 ms on this machine, and paging stays fast on a 100,000-message folder.

Set-up (not timed): one user with INBOX of ``--messages`` (default 10,000) and a folder
"Large" of ``--large`` (default 100,000) messages, Thai subjects and bodies from a fixed
seed, filled in-process exactly as `bench_imap_large` fills them (the IMAP APPEND path).
Dovecot gets the same messages in its Maildir.

Measured, median and 95th percentile of ``--requests`` requests each, on one kept-alive
HTTPS connection signed in with the session cookie:

- ``inbox``: ``GET /mail`` — folder list with unread counts, the newest 50 messages
  (headers read from their encrypted blobs), rendered to HTML;
- ``large_first``: ``GET /mail/folder/Large`` (100k folder, first page);
- ``large_deep``: ``GET /mail/folder/Large?page=1000`` (messages 49,951-50,000 from the top);
- ``read``: ``GET /mail/folder/INBOX/{uid}`` — the reading view of one message;
- ``search``: ``GET /mail/search?q=เดินทางไปราชการ`` — a Thai substring over INBOX.

The reference: there is no webmail in Debian to run beside it, so the comparison is with
the least a webmail on Dovecot (Roundcube, say) must ask of its IMAP server for the same
inbox page, before rendering anything: connect over TLS, LOGIN, SELECT INBOX, ``FETCH``
of the newest 50 with ``UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE``, LOGOUT (a PHP
webmail connects anew per page). The ratio is edgebox's whole page / Dovecot's fetch.
Also recorded: the page sizes in bytes (the limit is 500 KB before user action; the
browser tests check it with every sub-resource counted).

What it is not: part of ``make test``; run it directly (``make bench`` does):

    .venv/bin/python tests/bench/bench_web.py [--messages 10000] [--large 100000]

Results are printed and written to tests/bench/results/web.json.
"""

from __future__ import annotations

import argparse
import http.client
import imaplib
import re
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from appliance.config import DEV_PORTS
from tests.bench.bench_imap import TLS_NAME
from tests.bench.bench_imap_large import PASSWORD, SEED, USER, fill_dovecot, fill_edgebox
from tests.bench.common import (
    RESULTS_DIR,
    commit,
    machine,
    ratio,
    running_edgebox,
    scratch_dir,
    write_results,
)
from tests.harness import free_port_offset
from tests.peers import PeerError, require_binary
from tests.peers.dovecot import DovecotServer

RESULTS = RESULTS_DIR / "web.json"
SEARCH = "เดินทางไปราชการ"


class Browser:
    """One kept-alive HTTPS connection with a session cookie, like a browser tab."""

    def __init__(self, port: int, cafile: Path) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        context.check_hostname = False
        self.origin = f"https://127.0.0.1:{port}"
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
        self.cookie = ""

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        all_headers = dict(headers or {})
        if self.cookie:
            all_headers["Cookie"] = self.cookie
        self.conn.request(method, path, body=body, headers=all_headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def sign_in(self) -> None:
        form = urlencode({"address": USER, "password": PASSWORD}).encode()
        status, headers, _ = self.request(
            "POST", "/signin", form,
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin},
        )  # fmt: skip
        assert status == 303, status
        self.cookie = headers["set-cookie"].split(";")[0]

    def get(self, path: str) -> tuple[float, int]:
        started = time.perf_counter()
        status, _, data = self.request("GET", path)
        elapsed = time.perf_counter() - started
        assert status == 200, (path, status, data[:300])
        return elapsed, len(data)


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000,
    }


def measure(action: Callable[[], tuple[float, int]], requests: int) -> dict[str, float]:
    action()  # warm-up, untimed
    samples, size = [], 0
    for _ in range(requests):
        elapsed, size = action()
        samples.append(elapsed)
    return {**_stats(samples), "bytes": size}


def dovecot_page(port: int, cafile: Path) -> tuple[float, int]:
    """What a PHP webmail asks of Dovecot for one inbox page."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    started = time.perf_counter()
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
    client.login(USER, PASSWORD)
    typ, data = client.select("INBOX", readonly=True)
    total = int(data[0] or 0)
    first = max(1, total - 49)
    typ, rows = client.fetch(f"{first}:{total}", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK"
    client.logout()
    return time.perf_counter() - started, sum(
        len(r[0]) if isinstance(r, tuple) else len(r) for r in rows
    )


def run(count: int, large: int, requests: int, work: Path) -> dict[str, Any]:
    require_binary("dovecot", "dovecot-imapd")
    plan = [("INBOX", count, SEED)] + ([("Large", large, SEED + 1)] if large else [])
    result: dict[str, Any] = {
        "commit": commit(), "machine": machine(), "messages": count, "large": large,
        "requests": requests, "edgebox": {}, "dovecot": {},
    }  # fmt: skip
    with ExitStack() as stack:
        dc = stack.enter_context(DovecotServer(work, users={USER: PASSWORD}, hostname=TLS_NAME))
        assert dc.imaps_port is not None
        assert dc.cert_path is not None
        print(f"[web] filling Dovecot with {count}+{large} ...", flush=True)
        fill_dovecot(dc, plan)
        data = work / "edgebox-data"
        print(f"[web] filling edgebox with {count}+{large} ...", flush=True)
        result["edgebox"]["fill_s"] = fill_edgebox(data, plan)
        offset = free_port_offset()
        stack.enter_context(running_edgebox(data, work / "edgebox.log", offset))
        tab = Browser(DEV_PORTS["https"] + offset, data / "keys" / "ca.pem")
        tab.sign_in()
        # Dovecot builds its index on first SELECT; a live server has one.
        dovecot_page(dc.imaps_port, dc.cert_path)
        _, _, page = tab.request("GET", "/mail")
        uids = re.findall(r'href="/mail/folder/INBOX/(\d+)"', page.decode())
        assert uids, "no message links on the inbox page"
        pages: dict[str, str] = {
            "inbox": "/mail",
            "read": f"/mail/folder/INBOX/{uids[len(uids) // 2]}",
            "search": "/mail/search?" + urlencode({"q": SEARCH, "folder": "INBOX"}),
        }
        if large:
            pages["large_first"] = "/mail/folder/" + quote("Large", safe="")
            pages["large_deep"] = "/mail/folder/Large?page=" + str(min(1000, large // 50))
        for name, path in pages.items():
            result["edgebox"][name] = measure(lambda p=path: tab.get(p), requests)
            print(f"[web] {name}: {result['edgebox'][name]}", flush=True)
        result["dovecot"]["inbox"] = measure(
            lambda: dovecot_page(dc.imaps_port, dc.cert_path), requests
        )
    return result


def report(result: dict[str, Any]) -> str:
    eb, dc = result["edgebox"], result["dovecot"]
    lines = [
        f"INBOX {result['messages']} messages, Large {result['large']}; "
        f"{result['requests']} requests each",
        f"{'':14} {'median ms':>10} {'p95 ms':>8} {'bytes':>9}",
    ]
    for name, figures in eb.items():
        if isinstance(figures, dict):
            lines.append(f"{name:14} {figures['median_ms']:10.1f} {figures['p95_ms']:8.1f} "
                         f"{figures['bytes']:9}")  # fmt: skip
    inbox = ratio(eb["inbox"]["median_ms"], dc["inbox"]["median_ms"])
    lines.append(f"{'dovecot fetch':14} {dc['inbox']['median_ms']:10.1f} "
                 f"{dc['inbox']['p95_ms']:8.1f}   (ratio inbox/dovecot {inbox:.2f})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        with scratch_dir("bench-web-") as work:
            result = run(args.messages, args.large, args.requests, work)
    except PeerError as exc:
        print(f"[web] cannot run: {exc}", file=sys.stderr)
        return 2
    print(report(result))
    write_results(RESULTS, result)
    return 0


@pytest.mark.bench
def test_bench_web(tmp_path: Path) -> None:
    run(500, 0, 3, tmp_path)


if __name__ == "__main__":
    sys.exit(main())
