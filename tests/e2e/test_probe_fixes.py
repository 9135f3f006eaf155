"""Issue 16 part B against a real demo box: what the attacker's probe got through, refused.

One `edgebox run --demo` (agency demo.go.th: somchai rank 8 and admin, malee rank 5,
director rank 10), driven from outside with Debian's openssl and swaks, curl, smtplib
and a raw TLS socket:

- the server certificate spans at most 397 days and verifies against the box CA;
- the box CA's name constraints make ``openssl verify`` refuse a certificate for a
  foreign name signed with the CA's own key;
- TLS 1.2 refuses CBC suites on HTTPS, SMTPS, IMAPS and SMTP STARTTLS;
- the MX port refuses a spoofed local sender (envelope or From), with swaks too;
- ``postmaster`` (bare and @domain) is accepted and lands with the agency admin;
- a request with Content-Length and Transfer-Encoding gets 400 and a close; obs-fold 400;
- malee cannot reach the director through a two-person group, nor create a broadcast.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.security import keys as box_keys
from appliance.security import tls
from tests.e2e.conftest import BoxStarter
from tests.harness import RunningBox, curl, edgebox, require_tool, stored

pytestmark = pytest.mark.slow

DOMAIN = "demo.go.th"
PASSWORDS = {
    f"somchai@{DOMAIN}": "somchai-demo-2026",
    f"malee@{DOMAIN}": "malee-demo-2026",
    f"director@{DOMAIN}": "director-demo-2026",
}


@pytest.fixture(scope="module")
def box(start_running_box: BoxStarter) -> RunningBox:
    return start_running_box("probe", demo=True, clean_exit=False)


def _openssl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("openssl"), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def _served_certificate(box: RunningBox, tmp_path: Path) -> Path:
    """Fetch the certificate the HTTPS listener presents, as a client sees it."""
    done = _openssl("s_client", "-connect", f"127.0.0.1:{box.port('https')}",
                    "-servername", "localhost")  # fmt: skip
    begin = done.stdout.index("-----BEGIN CERTIFICATE-----")
    end = done.stdout.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    path = tmp_path / "served.pem"
    path.write_text(done.stdout[begin:end] + "\n")
    return path


# --- certificates --------------------------------------------------------------------


def test_certificate_within_397_days_and_verified(box: RunningBox, tmp_path: Path) -> None:
    served = _served_certificate(box, tmp_path)
    verified = _openssl("verify", "-x509_strict", "-CAfile", str(box.ca), str(served))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    cert = x509.load_pem_x509_certificate(served.read_bytes())
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span <= dt.timedelta(days=397)  # and so within Apple's 825 as well
    # openssl's own reading of the dates agrees.
    dates = _openssl("x509", "-noout", "-startdate", "-enddate", "-in", str(served)).stdout
    assert "notBefore=" in dates
    assert "notAfter=" in dates
    # The CA key is sealed at rest: no private key in the clear beside the CA.
    keys_dir = box.data / "keys"
    assert not (keys_dir / "ca.key").exists()
    assert b"PRIVATE KEY" not in (keys_dir / "ca.key.sealed").read_bytes()


def test_status_shows_the_certificates_healthy(box: RunningBox) -> None:
    status = edgebox("status", "--data", str(box.data), "--lang", "en", check=False)
    assert "[ok   ] certificate: server certificate valid until" in status.stdout
    assert "[ok   ] ca: box CA limited to the agency's names" in status.stdout


def _signed_by_box_ca(box: RunningBox, name: str, path: Path) -> Path:
    """A certificate for *name* signed with the box CA's key, as a thief of it would."""
    keys_dir = box.data / "keys"
    ca = x509.load_pem_x509_certificate(box.ca.read_bytes())
    pem = box_keys.unseal(keys_dir, tls.CA_KEY_PURPOSE, (keys_dir / "ca.key.sealed").read_bytes())
    ca_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("intranet.demo.go.th", True), ("www.krungthai.com", False), ("mail.other.go.th", False)],
)
def test_ca_name_constraints_refuse_a_foreign_name(
    box: RunningBox, tmp_path: Path, name: str, accepted: bool
) -> None:
    leaf = _signed_by_box_ca(box, name, tmp_path / "leaf.pem")
    verified = _openssl("verify", "-CAfile", str(box.ca), str(leaf))
    if accepted:
        assert verified.returncode == 0, verified.stdout + verified.stderr
    else:
        assert verified.returncode != 0
        assert "permitted subtree violation" in verified.stdout + verified.stderr


# --- TLS 1.2 suites ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "starttls"),
    [("https", None), ("smtp-submissions", None), ("imaps", None), ("smtp-submission", "smtp")],
)
def test_tls12_refuses_cbc(box: RunningBox, service: str, starttls: str | None) -> None:
    def handshake(cipher: str) -> subprocess.CompletedProcess[str]:
        args = ["s_client", "-connect", f"127.0.0.1:{box.port(service)}", "-tls1_2",
                "-cipher", cipher, "-CAfile", str(box.ca)]  # fmt: skip
        if starttls:
            args += ["-starttls", starttls]
        return _openssl(*args, stdin="")

    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-SHA"):
        refused = handshake(cbc)
        assert refused.returncode != 0, cbc
        assert "Cipher is (NONE)" in refused.stdout or "handshake failure" in refused.stderr
    accepted = handshake("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in accepted.stdout


# --- the MX port and postmaster -------------------------------------------------------


def _mx(box: RunningBox) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30)


def _message(sender: str, to: str, marker: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@probe.test>\r\n\r\nmarker {marker}\r\n"
    ).encode()


def test_spoofed_local_sender_refused_on_mx(box: RunningBox) -> None:
    director = f"director@{DOMAIN}"
    with _mx(box) as client:
        client.ehlo("attacker.lan")
        code, reply = client.mail(director)
        assert code == 550
        assert b"5.7.1" in reply
        assert b"submission port" in reply
        client.rset()
        # The envelope claims an outsider, the From the director: refused after DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("x@example.com", [f"malee@{DOMAIN}"],
                            _message(director, f"malee@{DOMAIN}", uuid.uuid4().hex))  # fmt: skip
        assert refused.value.smtp_code == 550
    # Real mail from outside still arrives.
    with _mx(box) as client:
        sent = _message("someone@example.com", f"malee@{DOMAIN}", "ok")
        assert client.sendmail("someone@example.com", [f"malee@{DOMAIN}"], sent) == {}


def test_swaks_spoof_refused(box: RunningBox) -> None:
    result = subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--port", str(box.port("smtp-mx")),
         "--from", f"director@{DOMAIN}", "--to", f"malee@{DOMAIN}",
         "--header", f"From: director@{DOMAIN}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "550 5.7.1" in result.stdout


def test_postmaster_reaches_the_agency_admin(box: RunningBox) -> None:
    markers = {}
    with _mx(box) as client:
        for rcpt in ("postmaster", f"postmaster@{DOMAIN}", f"PostMaster@{DOMAIN}"):
            markers[rcpt] = uuid.uuid4().hex
            sent = _message("someone@example.com", rcpt, markers[rcpt])
            refused = client.sendmail("someone@example.com", [rcpt], sent)
            assert refused == {}
    context = ssl.create_default_context(cafile=str(box.ca))
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.starttls(context=context)
        client.login(f"malee@{DOMAIN}", PASSWORDS[f"malee@{DOMAIN}"])
        markers["submission"] = uuid.uuid4().hex
        sent = _message(f"malee@{DOMAIN}", "postmaster", markers["submission"])
        assert client.sendmail(f"malee@{DOMAIN}", ["postmaster"], sent) == {}
    inbox = trio.run(stored, box.data, f"somchai@{DOMAIN}")
    for marker in markers.values():
        assert sum(marker.encode() in content for _, content in inbox) == 1, marker


# --- HTTP framing --------------------------------------------------------------------


def _raw_https(box: RunningBox, request: bytes) -> bytes:
    """Send *request* over TLS and read until the server closes the connection."""
    context = ssl.create_default_context(cafile=str(box.ca))
    tcp = socket.create_connection(("127.0.0.1", box.port("https")), timeout=30)
    with context.wrap_socket(tcp, server_hostname="localhost") as stream:
        stream.sendall(request)
        chunks = []
        while True:
            try:
                chunk = stream.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError):
                break
            if not chunk:
                break  # the server closed: what RFC 9112 §6.1 asks
            chunks.append(chunk)
    return b"".join(chunks)


def test_content_length_with_transfer_encoding_closes(box: RunningBox) -> None:
    answer = _raw_https(
        box,
        b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled GET was never answered
    assert b"connection: close" in answer.lower()


def test_obs_folded_transfer_encoding_is_400(box: RunningBox) -> None:
    answer = _raw_https(
        box,
        b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ")


# --- chat rules ------------------------------------------------------------------------


def _sign_in(box: RunningBox, address: str) -> str:
    body = {"address": address, "password": PASSWORDS[address], "client": "app"}
    status, answer = curl(box, "POST", "/api/v1/session", body)
    assert status == 201, answer
    return str(answer["token"])


def test_two_person_group_with_the_director_refused(box: RunningBox) -> None:
    malee = _sign_in(box, f"malee@{DOMAIN}")
    director = f"director@{DOMAIN}"
    status, error = curl(box, "POST", "/api/v1/direct", {"with": director}, token=malee)
    assert (status, error["error"]["code"]) == (403, "higher_rank")
    status, error = curl(box, "POST", "/api/v1/rooms",
                         {"kind": "group", "name": "คุยด่วน", "members": [director]},
                         token=malee)  # fmt: skip
    assert (status, error["error"]["code"]) == (403, "higher_rank_group")
    assert error["error"]["message_th"]
    # The director may start one with her.
    boss = _sign_in(box, director)
    status, room = curl(box, "POST", "/api/v1/rooms",
                        {"kind": "group", "name": "งานด่วน", "members": [f"malee@{DOMAIN}"]},
                        token=boss)  # fmt: skip
    assert status == 201, room


def test_only_admins_create_broadcasts(box: RunningBox) -> None:
    malee = _sign_in(box, f"malee@{DOMAIN}")
    status, error = curl(box, "POST", "/api/v1/rooms",
                         {"kind": "broadcast", "name": "ประกาศ"}, token=malee)  # fmt: skip
    assert (status, error["error"]["code"]) == (403, "broadcast_admins_only")
    somchai = _sign_in(box, f"somchai@{DOMAIN}")
    status, room = curl(box, "POST", "/api/v1/rooms",
                        {"kind": "broadcast", "name": "ประกาศกรม"}, token=somchai)  # fmt: skip
    assert status == 201, room
