"""The box found on a LAN: mDNS between network namespaces joined by veth pairs.

Three namespaces the test makes (root only; a missing privilege fails the test):

    lan ── veth ── box ── veth ── uplink
    10.231.1.2     10.231.1.1 / 10.231.2.1     10.231.2.2

The box runs in ``box`` with discovery on and ``up0`` (the uplink) excluded. Two
independent browsers watch from ``lan``: Debian's ``avahi-browse`` (with an
avahi-daemon and a D-Bus system bus of the namespace's own; tests/e2e/avahi_browse.sh)
and python-zeroconf's ServiceBrowser in its own process (tests/e2e/mdns_browse.py);
another zeroconf browser watches from ``uplink``. Seen from the LAN: the unprovisioned
box and its setup path with the fingerprint the console printed; after provisioning,
state=provisioned in the TXT and the mail services; a new address re-announced;
goodbyes on stop (the records go in seconds, not after their TTL); after a factory
reset, state=unprovisioned again. Seen from the uplink: nothing.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RunningBox, edgebox, missing_prerequisite, require_tool, start_box

pytestmark = pytest.mark.slow

BOX_LAN, PEER_LAN = "10.231.1.1", "10.231.1.2"
BOX_UP, PEER_UP = "10.231.2.1", "10.231.2.2"
EXTRA_LAN = "10.231.1.5"
TYPES = ["_edgebox._tcp.local.", "_https._tcp.local.", "_imaps._tcp.local.",
         "_submissions._tcp.local."]  # fmt: skip
BROWSER = Path(__file__).with_name("mdns_browse.py")
AVAHI = Path(__file__).with_name("avahi_browse.sh")
ROOT = Path(__file__).resolve().parents[2]
#: Every wait is bounded: mDNS probing and announcing take a few seconds at most.
WAIT = 30.0


@dataclass
class Namespaces:
    box: str
    lan: str
    uplink: str

    def exec(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        missing_prerequisite("network namespaces need root")
    require_tool("ip")
    tag = secrets.token_hex(3)
    ns = Namespaces(f"eb-box-{tag}", f"eb-lan-{tag}", f"eb-up-{tag}")
    made: list[str] = []
    try:
        for name in (ns.box, ns.lan, ns.uplink):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", "lan0", "netns", ns.box, "type", "veth",
            "peer", "name", "peer0", "netns", ns.lan)  # fmt: skip
        _ip("link", "add", "up0", "netns", ns.box, "type", "veth",
            "peer", "name", "peer0", "netns", ns.uplink)  # fmt: skip
        ends = [(ns.box, "lan0", BOX_LAN), (ns.lan, "peer0", PEER_LAN),
                (ns.box, "up0", BOX_UP), (ns.uplink, "peer0", PEER_UP)]  # fmt: skip
        for name, dev, address in ends:
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
        yield ns
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@dataclass
class Browser:
    process: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    #: avahi: the daemon and the bus share the browser's process group.
    group: bool = False

    def wait_for(self, test: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Return the first event (already seen or coming) that passes *test*."""
        for event in self.seen:
            if test(event):
                return event
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if test(event):
                return event
        raise AssertionError(f"no mDNS event: {what}; seen {json.dumps(self.seen, indent=1)}")

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def forget(self) -> None:
        self.drain()
        self.seen.clear()

    def stop(self) -> None:
        if self.group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _follow(process: subprocess.Popen[str], browser: Browser,
            parse: Callable[[str], dict[str, Any] | None]) -> Browser:  # fmt: skip
    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = parse(line.rstrip("\n"))
            if event is not None:
                browser.events.put(event)

    threading.Thread(target=read, daemon=True).start()
    browser.wait_for(lambda e: e["event"] == "browsing", "browser started")
    return browser


def start_browser(ns: Namespaces, name: str, address: str) -> Browser:
    """python-zeroconf's ServiceBrowser, in its own process in namespace *name*."""
    process = subprocess.Popen(
        [*ns.exec(name), sys.executable, str(BROWSER), address, *TYPES],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    return _follow(process, Browser(process), json.loads)


def parse_avahi(line: str) -> dict[str, Any] | None:
    """One line of ``avahi-browse -p -r`` as an event like mdns_browse.py's."""
    if line == "browsing":
        return {"event": "browsing"}
    fields = line.split(";")
    if len(fields) < 6 or fields[0] not in "=-" or fields[2] != "IPv4":
        return None  # "+" (found, not yet resolved) and IPv6 lines
    event: dict[str, Any] = {
        "event": "added" if fields[0] == "=" else "removed",
        "type": f"{fields[4]}.{fields[5]}.",
        # avahi-browse escapes the instance name (\032 for space, \. for a dot).
        "name": fields[3],
    }
    if fields[0] == "=":
        event["server"] = fields[6] + "."
        event["addresses"] = [fields[7]]
        event["port"] = int(fields[8])
        txt = re.findall(r'"((?:[^"\\]|\\.)*)"', ";".join(fields[9:]))
        event["txt"] = dict(item.partition("=")[::2] for item in txt)
    return event


def start_avahi(ns: Namespaces, name: str, interface: str, tmp_path: Path) -> Browser:
    """Debian's avahi-browse with its own avahi-daemon and system bus in *name*."""
    for tool in ("avahi-browse", "avahi-daemon", "dbus-daemon"):
        require_tool(tool)
    conf = tmp_path / f"avahi-{name}.conf"
    conf.write_text(
        "[server]\nuse-ipv4=yes\nuse-ipv6=no\n"
        f"allow-interfaces={interface}\n"
        "[wide-area]\nenable-wide-area=no\n[publish]\ndisable-publishing=yes\n"
    )
    process = subprocess.Popen(
        [*ns.exec(name), "sh", str(AVAHI), str(conf), "-a", "-r", "-p", "-k"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    return _follow(process, Browser(process, group=True), parse_avahi)


def avahi_lookup(
    browser: Browser, service_type: str, test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Resolve *service_type* afresh with avahi-browse in the running browser's
    namespaces (its private bus); retry until an answer passes *test*."""
    deadline = time.monotonic() + WAIT
    answers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        done = subprocess.run(
            [require_tool("nsenter"), "-t", str(browser.process.pid), "-m", "-n",
             "avahi-browse", "-r", "-t", "-p", "-k", service_type],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        answers = [e for e in map(parse_avahi, done.stdout.splitlines()) if e is not None]
        for event in answers:
            if test(event):
                return event
        time.sleep(0.5)
    raise AssertionError(f"avahi-browse never answered as expected: {answers}")


def edgebox_record(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("type") == "_edgebox._tcp.local."
        and e["event"] in ("added", "updated")
        and e.get("txt", {}).get("state") == state
    )


def start_in_box(ns: Namespaces, data: Path) -> RunningBox:
    env = {
        "EDGEBOX_DISCOVERY": "1",
        "EDGEBOX_DISCOVERY_EXCLUDE_INTERFACES": "up0",
        "EDGEBOX_DISCOVERY_POLL_INTERVAL": "0.5",
    }
    return start_box(data, env=env, wrap=ns.exec(ns.box))


def console_value(box: RunningBox, label: str) -> str:
    return next(line for line in reversed(box.output) if line.startswith(label + ": ")).split(
        ": ", 1
    )[1]


@pytest.fixture
def browsers() -> Iterator[list[Browser]]:
    """The browsers a test started; each is ended after the test, however it ended."""
    started: list[Browser] = []
    yield started
    for browser in started:
        browser.stop()


def test_box_is_found_on_the_lan_only_and_its_state_follows(
    namespaces: Namespaces, browsers: list[Browser], tmp_path: Path
) -> None:
    ns = namespaces
    avahi = start_avahi(ns, ns.lan, "peer0", tmp_path)
    browsers.append(avahi)
    lan = start_browser(ns, ns.lan, PEER_LAN)
    browsers.append(lan)
    uplink = start_browser(ns, ns.uplink, PEER_UP)
    browsers.append(uplink)
    data = tmp_path / "box"
    box = start_in_box(ns, data)
    try:
        box_id = json.loads((data / "device" / "identity.json").read_text())["box_id"]
        host = f"edgebox-{box_id[:6]}.local."
        found = lan.wait_for(edgebox_record("unprovisioned"), "the unprovisioned box")
        assert found["txt"]["box_id"] == box_id
        assert found["txt"]["fp"] == console_value(box, "certificate fingerprint")
        assert found["txt"]["version"]
        assert found["server"] == host
        assert found["addresses"] == [BOX_LAN]
        assert found["port"] == box.port("https")
        setup = lan.wait_for(lambda e: e.get("type") == "_https._tcp.local." and "txt" in e,
                             "the setup path")  # fmt: skip
        assert setup["txt"] == {"path": "/setup"}
        assert not [e for e in lan.drain() if e.get("type") in TYPES[2:]]
        # avahi-browse sees the same record.
        seen_by_avahi = avahi.wait_for(edgebox_record("unprovisioned"), "avahi: the box")
        assert seen_by_avahi["txt"] == found["txt"]
        assert seen_by_avahi["server"] == host
        assert seen_by_avahi["addresses"] == [BOX_LAN]
        assert seen_by_avahi["port"] == box.port("https")

        # Provisioning (from inside the box's namespace, over its loopback).
        code = console_value(box, "setup code")
        body = json.dumps({
            "setup_code": code, "domain": "lan.go.th", "agency_name_th": "สำนักงานบนแลน",
            "admin": {"address": "admin@lan.go.th", "name_th": "ผู้ดูแล",
                      "password": "lan-admin-2569"},
        })  # fmt: skip
        done = subprocess.run(
            [*ns.exec(ns.box), require_tool("curl"), "-sS", "-k", "-X", "POST",
             "-H", "Content-Type: application/json", "--data-binary", body,
             f"https://127.0.0.1:{box.port('https')}/api/v1/setup/provision"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(done.stdout)["state"] == "provisioned", done.stdout
        provisioned = lan.wait_for(edgebox_record("provisioned"), "state=provisioned")
        # avahi-browse resolves a service once; a fresh one reads the daemon's cache,
        # which the box's re-announcement updated.
        assert (
            avahi_lookup(avahi, "_edgebox._tcp", edgebox_record("provisioned"))["txt"]
            == (provisioned["txt"])
        )
        avahi.wait_for(lambda e: e.get("type") == "_imaps._tcp.local." and "port" in e,
                       "avahi: imaps")  # fmt: skip
        # The agency's certificate serves HTTPS now: the fingerprint follows it.
        assert provisioned["txt"]["fp"] != found["txt"]["fp"]
        imaps = lan.wait_for(
            lambda e: e.get("type") == "_imaps._tcp.local." and "port" in e, "imaps"
        )
        assert imaps["port"] == box.port("imaps")
        sub = lan.wait_for(lambda e: e.get("type") == "_submissions._tcp.local." and "port" in e,
                           "submissions")  # fmt: skip
        assert sub["port"] == box.port("smtp-submissions")

        # A new address on the LAN interface: announced again with it.
        _ip("-n", ns.box, "addr", "add", f"{EXTRA_LAN}/24", "dev", "lan0")
        lan.wait_for(
            lambda e: (
                e.get("type") == "_edgebox._tcp.local." and EXTRA_LAN in e.get("addresses", [])
            ),
            "the new address",
        )

        # Never on the uplink, through all of it.
        assert uplink.drain() == [{"event": "browsing"}]
        lan.forget()
        avahi.forget()
    finally:
        assert box.stop() == 0
    # Goodbyes: the records leave at once (their TTLs are minutes to an hour).
    for kind in ("_edgebox._tcp.local.", "_imaps._tcp.local."):
        for browser in (lan, avahi):
            browser.wait_for(lambda e, k=kind: e.get("type") == k and e["event"] == "removed",
                             f"goodbye for {kind}")  # fmt: skip

    # Factory reset: the box comes back unprovisioned and says so on the LAN.
    edgebox("factory-reset", "--data", str(data), "--yes")
    lan.forget()
    avahi.forget()
    again = start_in_box(ns, data)
    try:
        back = lan.wait_for(edgebox_record("unprovisioned"), "unprovisioned after the reset")
        assert back["txt"]["box_id"] == box_id
        assert back["txt"]["fp"] == found["txt"]["fp"]  # the device certificate stayed
        assert (
            avahi.wait_for(edgebox_record("unprovisioned"), "avahi: reset")["txt"] == (back["txt"])
        )
        assert uplink.drain() == [{"event": "browsing"}]
    finally:
        assert again.stop() == 0
