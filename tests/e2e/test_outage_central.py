"""The outage scenario against a real central mail service: Dovecot and Postfix (issue 5).

The same story as tests/e2e/test_outage.py, but the centre's mail is what a ministry
runs, not an edgebox hub: Debian's Dovecot holds every user's central mailbox (IMAPS,
each box acting for its users as a *master user*), and Debian's Postfix is the central
SMTP relay (STARTTLS, then AUTH PLAIN checked by that Dovecot's auth service:
``smtpd_sasl_type = dovecot``). The hub still runs, for the directory and chat.

How the boxes are pointed at it is what an operator does after ``edgebox enroll``: the
service account enrolment wrote to ``keys/central.json`` is provisioned at the centre
(here: as a Dovecot master user, which Postfix's SASL also accepts), the centre's
certificates are added to ``keys/central-ca.pem``, and ``central_smtp`` /
``central_imap`` name the servers (here through the environment).

Mail routing, as a real deployment would do it: each box is the delivery point (MX) of
its own agency, so Postfix hands mail for a.go.th to box A and for b.go.th to box B over
SMTP. Postfix does *not* also deliver into Dovecot over LMTP: the central store receives
an agency's mail from the box's mailbox replication (the box appends what it delivered),
and a second copy delivered centrally would differ in its ``Received:`` lines, so content
matching could not tell the two apart and every mail would be there twice.

Everything from box A to the centre passes through fault-injecting proxies — hub sync,
SMTP submission to Postfix, IMAPS to Dovecot, and Postfix's deliveries to A's MX — and
"cutting A's uplink" cuts all four.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import imaplib
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import DEV_PORTS
from appliance.sync.central import CENTRAL_CA_FILE, load_credentials
from tests.e2e.uplink import (
    FAST,
    PASSWORDS,
    enrol,
    post,
    room_texts,
    sign_in,
    submit,
    wait_for,
)
from tests.faults.proxy import ProxyProcess
from tests.harness import (
    RunningBox,
    curl,
    edgebox,
    free_port_offset,
    init_box,
    require_tool,
    start_box,
)
from tests.peers.dovecot import DovecotServer
from tests.peers.postfix import PostfixServer

pytestmark = pytest.mark.slow

#: The central relay as a test needs it: a deferred mail is retried within seconds, and
#: one delivery at a time per destination, so the order the box sent in (most urgent
#: first) is the order the recipient's box receives in. (A production Postfix delivers
#: in parallel; the order guarantee of the box ends at the relay.)
POSTFIX_TUNING = {
    "queue_run_delay": "2s",
    "minimal_backoff_time": "2s",
    "maximal_backoff_time": "6s",
    "smtp_destination_concurrency_limit": "1",
}
# -- the network ---------------------------------------------------------------------------


@dataclass
class Network:
    hub: RunningBox
    a: RunningBox
    b: RunningBox
    dovecot: DovecotServer
    postfix: PostfixServer
    #: Every road between box A and the centre, both directions.
    uplink_a: list[ProxyProcess]

    def cut_a(self) -> None:
        for proxy in self.uplink_a:
            proxy.control.cut()

    def restore_a(self) -> None:
        for proxy in self.uplink_a:
            proxy.control.restore()


def box_offsets(count: int) -> list[int]:
    """Port offsets whose dev ports are free now and do not overlap one another."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(100):
        offset = free_port_offset()
        ports = {port + offset for port in DEV_PORTS.values()}
        if not ports & taken:
            chosen.append(offset)
            taken |= ports
        if len(chosen) == count:
            return chosen
    raise RuntimeError("no distinct port offsets found")


def trust_centre(data: Path, *certificates: Path | None) -> None:
    """Add the central mail servers' certificates beside the hub's CA, as an operator
    pointing an enrolled box at another central mail server does (docs/hub.md)."""
    bundle = data / "keys" / CENTRAL_CA_FILE
    pems = [bundle.read_text()] + [c.read_text() for c in certificates if c is not None]
    bundle.write_text("\n".join(pem.strip() for pem in pems) + "\n")


@contextlib.contextmanager
def central_network(tmp_path: Path) -> Iterator[Network]:
    require_tool("postfix")
    require_tool("dovecot")
    hub_data, a_data, b_data = tmp_path / "hub", tmp_path / "a", tmp_path / "b"
    init_box(hub_data, "hub.go.th", {})
    init_box(a_data, "a.go.th", {k: v for k, v in PASSWORDS.items() if k.endswith("a.go.th")})
    init_box(b_data, "b.go.th", {"dara@b.go.th": PASSWORDS["dara@b.go.th"]})
    running: list[RunningBox] = []
    try:
        hub = start_box(hub_data, extra=["--role", "hub"], env=FAST)
        running.append(hub)
        enrol(hub, hub_data, a_data, "a.go.th")
        enrol(hub, hub_data, b_data, "b.go.th")
        # The service accounts enrolment made are provisioned at the centre as master
        # users: IMAP "act as this user" and, with the same password, SMTP AUTH.
        services = {}
        for data in (a_data, b_data):
            credentials = load_credentials(data / "keys")
            assert credentials is not None, "enrolment wrote no central.json"
            services[credentials.username] = credentials.password
        a_offset, b_offset = box_offsets(2)
        a_mx = ("127.0.0.1", DEV_PORTS["smtp-mx"] + a_offset)
        b_mx = DEV_PORTS["smtp-mx"] + b_offset
        with (
            DovecotServer(tmp_path, users=PASSWORDS, master_users=services, sasl=True) as dc,
            ProxyProcess(a_mx) as to_a_mx,
            PostfixServer(
                tmp_path,
                sasl_dovecot=(dc.host, dc.auth_port or 0),
                transport_map={
                    "a.go.th": f"smtp:[127.0.0.1]:{to_a_mx.port}",
                    "b.go.th": f"smtp:[127.0.0.1]:{b_mx}",
                },
                main_cf=POSTFIX_TUNING,
            ) as pf,
            ProxyProcess(("127.0.0.1", hub.port("hub-sync"))) as a_sync,
            ProxyProcess(("127.0.0.1", pf.smtp_port or 0)) as a_smtp,
            ProxyProcess(("127.0.0.1", dc.imaps_port or 0)) as a_imap,
        ):
            trust_centre(a_data, dc.cert_path, pf.cert_path)
            trust_centre(b_data, dc.cert_path, pf.cert_path)
            a_env = {
                **FAST,
                "EDGEBOX_HUB_URL": f"https://127.0.0.1:{a_sync.port}",
                "EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{a_smtp.port}",
                "EDGEBOX_CENTRAL_IMAP": f"imaps://127.0.0.1:{a_imap.port}",
            }
            b_env = {
                **FAST,
                "EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{pf.smtp_port}",
                "EDGEBOX_CENTRAL_IMAP": f"imaps://127.0.0.1:{dc.imaps_port}",
            }
            a = start_box(a_data, offset=a_offset, env=a_env)
            running.append(a)
            b = start_box(b_data, offset=b_offset, env=b_env)
            running.append(b)
            try:
                yield Network(hub, a, b, dc, pf, [a_sync, a_smtp, a_imap, to_a_mx])
            except BaseException:
                # Shown by pytest only when the test fails.
                print("--- postfix ---", pf.log_text()[-4000:], sep="\n")
                print("--- dovecot ---", dc.log_text()[-4000:], sep="\n")
                raise
    finally:
        for box in reversed(running):
            box.stop()
            print(f"--- {box.data.name} ---", *box.output[-60:], sep="\n")


# -- clients -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapServer:
    """Where to read a user's mail: a box's IMAPS or Dovecot's, and the CA to trust."""

    port: int
    cafile: Path

    @classmethod
    def of_box(cls, box: RunningBox) -> ImapServer:
        return cls(box.port("imaps"), box.ca)

    @classmethod
    def of_dovecot(cls, dc: DovecotServer) -> ImapServer:
        assert dc.imaps_port is not None
        assert dc.cert_path is not None
        return cls(dc.imaps_port, dc.cert_path)

    @contextlib.contextmanager
    def session(self, address: str) -> Iterator[imaplib.IMAP4_SSL]:
        context = ssl.create_default_context(cafile=str(self.cafile))
        context.check_hostname = False
        with imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=30) as imap:
            imap.login(address, PASSWORDS[address])
            yield imap


_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"(?P<sep>[^"]*)"|NIL) (?P<name>.+)$')


def _messages(imap: imaplib.IMAP4_SSL, mailbox: str) -> list[bytes]:
    """Every message of *mailbox*, whole, in UID order."""
    typ, _ = imap.select(mailbox, readonly=True)
    assert typ == "OK", mailbox
    _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
    return [item[1] for item in data if isinstance(item, tuple)]


def subjects(server: ImapServer, address: str, mailbox: str = "INBOX") -> list[str]:
    """Subjects in *mailbox*, in UID order, which is arrival order."""
    with server.session(address) as imap:
        contents = _messages(imap, mailbox)
    return [
        str(email.message_from_bytes(c, policy=email.policy.default)["Subject"]) for c in contents
    ]


def replica(server: ImapServer, address: str) -> dict[str, list[str]]:
    """Mailbox ("/"-separated name) -> sorted SHA-256 of each message's exact bytes, for
    every non-empty mailbox of *address*. Sorted lists, not sets: a copy too many shows."""
    out: dict[str, list[str]] = {}
    with server.session(address) as imap:
        _, listing = imap.list()
        for line in listing:
            assert isinstance(line, bytes)
            match = _LIST.match(line)
            assert match, line
            if b"\\noselect" in match["attrs"].lower():
                continue
            raw = match["name"].decode()
            name = raw[1:-1] if raw.startswith('"') else raw
            hashes = sorted(hashlib.sha256(c).hexdigest() for c in _messages(imap, raw))
            if hashes:
                sep = (match["sep"] or b"/").decode()
                out[name.replace(sep, "/")] = hashes
    return out


def timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def status_of(box: RunningBox) -> str:
    return edgebox("status", "--data", str(box.data), check=False).stdout


def append_at_centre(dc: DovecotServer, address: str, subject: str) -> None:
    """Mail that reaches *address* at the centre only (another client of Dovecot)."""
    content = (
        f"From: office@hub.go.th\r\nTo: {address}\r\nSubject: {subject}\r\n"
        f"Message-ID: <centre-{hashlib.sha256(subject.encode()).hexdigest()[:16]}@hub.go.th>\r\n"
        f"\r\n{subject}\r\n"
    ).encode()
    with ImapServer.of_dovecot(dc).session(address) as imap:
        typ, _ = imap.append("INBOX", None, None, content)
        assert typ == "OK"


# -- the scenario --------------------------------------------------------------------------

A_TO_B = [  # submitted in this order during the cut; must arrive most urgent first
    ("ปกติ ระหว่างตัด", None),
    ("ด่วน ระหว่างตัด", "ด่วน"),
    ("ด่วนที่สุด ระหว่างตัด", "ด่วนที่สุด"),
    ("ปกติ ระหว่างตัด 2", None),
]
DELIVERY_ORDER = ["ด่วนที่สุด ระหว่างตัด", "ด่วน ระหว่างตัด", "ปกติ ระหว่างตัด", "ปกติ ระหว่างตัด 2"]


def test_a_cut_box_keeps_serving_and_converges_with_dovecot_and_postfix(tmp_path: Path) -> None:
    with central_network(tmp_path) as net:
        a, b, dc = net.a, net.b, net.dovecot
        at_a, at_b, centre = ImapServer.of_box(a), ImapServer.of_box(b), ImapServer.of_dovecot(dc)

        # The directory travelled through the hub: A can open a room with B's dara.
        somchai, dara = sign_in(a, "somchai@a.go.th"), sign_in(b, "dara@b.go.th")

        def room_made() -> str | None:
            status, room = curl(a, "POST", "/api/v1/rooms",
                                {"kind": "group", "name": "ประสานงาน ก-ข",
                                 "members": ["dara@b.go.th"]}, token=somchai)  # fmt: skip
            return str(room["id"]) if status == 201 else None

        room_id = wait_for("dara@b.go.th in A's directory", room_made)
        post(a, somchai, room_id, "ก่อนตัด")

        # Before the cut: local mail, and the same mail replicated up to Dovecot.
        latency = {
            "submit before": timed(lambda: submit(a, "somchai@a.go.th", "malee@a.go.th", "ก่อน")),
        }
        wait_for("local mail on A", lambda: subjects(at_a, "malee@a.go.th") == ["ก่อน"])
        latency["read before"] = timed(lambda: subjects(at_a, "malee@a.go.th"))
        wait_for("A's mail in Dovecot", lambda: subjects(centre, "malee@a.go.th") == ["ก่อน"])
        wait_for("the room on B", lambda: "ก่อนตัด" in room_texts(b, dara, room_id))

        # --- cut A's uplink: hub, relay, central IMAP, and Postfix's road to A ---------
        net.cut_a()
        wait_for("A to see GIN down", lambda: "gin: down" in status_of(a))

        for subject, urgency in A_TO_B:
            submit(a, "somchai@a.go.th", "dara@b.go.th", subject, urgency)
        latency["submit during"] = timed(
            lambda: submit(a, "somchai@a.go.th", "malee@a.go.th", "ระหว่าง")
        )
        assert wait_for("local mail on A", lambda: "ระหว่าง" in subjects(at_a, "malee@a.go.th"))
        latency["read during"] = timed(lambda: subjects(at_a, "malee@a.go.th"))
        for n in range(3):
            post(a, somchai, room_id, f"ก ระหว่างตัด {n}")
            post(b, dara, room_id, f"ข ระหว่างตัด {n}")
        # On B and at the centre work goes on: B's mail to A waits at Postfix, B's own
        # mail is delivered and replicated, and the centre gets mail for an A user.
        submit(b, "dara@b.go.th", "somchai@a.go.th", "จาก ข ระหว่างตัด")
        submit(b, "dara@b.go.th", "dara@b.go.th", "ใน ข ระหว่างตัด")
        append_at_centre(dc, "malee@a.go.th", "จากส่วนกลาง ระหว่างตัด")
        wait_for("B's mail to A held at Postfix", lambda: net.postfix.queue_size() == 1)
        wait_for("B's own mail in Dovecot",
                 lambda: "ใน ข ระหว่างตัด" in subjects(centre, "dara@b.go.th"))  # fmt: skip
        print("latency on A (s):", {k: round(v, 3) for k, v in latency.items()})

        status_text = status_of(a)
        assert "gin: down" in status_text, status_text
        assert f"(total {len(A_TO_B)})" in status_text, status_text  # A→B mail waits on A
        assert not set(subjects(at_b, "dara@b.go.th")) & {s for s, _ in A_TO_B}
        assert "ก ระหว่างตัด 0" not in room_texts(b, dara, room_id)
        assert "จากส่วนกลาง ระหว่างตัด" not in subjects(at_a, "malee@a.go.th")

        # --- restore --------------------------------------------------------------------
        net.restore_a()

        def a_to_b_arrived() -> list[str] | None:
            wanted = {s for s, _ in A_TO_B}
            got = [s for s in subjects(at_b, "dara@b.go.th") if s in wanted]
            return got if len(got) >= len(A_TO_B) else None

        assert wait_for("A's mail in dara's INBOX on B", a_to_b_arrived) == DELIVERY_ORDER
        wait_for("B's mail to A", lambda: "จาก ข ระหว่างตัด" in subjects(at_a, "somchai@a.go.th"))
        wait_for("the centre's mail on A",
                 lambda: "จากส่วนกลาง ระหว่างตัด" in subjects(at_a, "malee@a.go.th"))  # fmt: skip

        expected_room = sorted(
            ["ก่อนตัด"]
            + [f"ก ระหว่างตัด {n}" for n in range(3)]
            + [f"ข ระหว่างตัด {n}" for n in range(3)]
        )

        def one_room_history() -> list[str] | None:
            on_a, on_b = room_texts(a, somchai, room_id), room_texts(b, dara, room_id)
            return on_a if on_a == on_b and sorted(on_a) == expected_room else None

        history = wait_for("one room history on A and B", one_room_history)

        def replicas() -> dict[str, dict[str, list[str]]]:
            return {
                "somchai@a.go.th": replica(at_a, "somchai@a.go.th"),
                "malee@a.go.th": replica(at_a, "malee@a.go.th"),
                "dara@b.go.th": replica(at_b, "dara@b.go.th"),
            }

        def central_replicas() -> dict[str, dict[str, list[str]]]:
            return {address: replica(centre, address) for address in PASSWORDS}

        def converged() -> dict[str, dict[str, list[str]]] | None:
            boxes = replicas()
            return boxes if boxes == central_replicas() else None

        settled = wait_for("every mailbox equal on its box and in Dovecot", converged)

        # Nothing more arrives later: the queues are empty and no copy follows.
        time.sleep(5)
        assert replicas() == settled == central_replicas()
        for mailboxes in settled.values():
            for hashes in mailboxes.values():
                assert len(set(hashes)) == len(hashes), "a message is there twice"
        b_inbox = subjects(at_b, "dara@b.go.th")
        assert sorted(b_inbox) == sorted([s for s, _ in A_TO_B] + ["ใน ข ระหว่างตัด"])
        assert sorted(subjects(at_a, "malee@a.go.th")) == sorted(
            ["ก่อน", "ระหว่าง", "จากส่วนกลาง ระหว่างตัด"]
        )
        assert subjects(at_a, "somchai@a.go.th") == ["จาก ข ระหว่างตัด"]
        assert room_texts(a, somchai, room_id) == room_texts(b, dara, room_id) == history
        assert "(total 0)" in status_of(a)
        assert net.postfix.queue_size() == 0
        # Both boxes relayed as their own service account (AUTH PLAIN, checked by Dovecot).
        log = net.postfix.log_text()
        for box in (a, b):
            credentials = load_credentials(box.data / "keys")
            assert credentials is not None
            assert f"sasl_username={credentials.username}" in log
