"""A private Dovecot (IMAP + LMTP) on 127.0.0.1 for e2e tests and benchmarks.

What it is: Debian's ``dovecot`` binary run in the foreground (``dovecot -F -c FILE``) with
a configuration generated here, passwd-file users with plain-text passwords, Maildir
storage, optional master users (for SASL PLAIN "act as user": authcid = master user,
authzid = target user), IMAPS with a throw-away self-signed certificate, and optionally
Dovecot's auth service on TCP for Postfix (``smtpd_sasl_type = dovecot``), so one
account is both a master user and an SMTP AUTH identity, with one password. fsync
settings are left at Dovecot's defaults on purpose: the SMTP benchmark compares against
an edgebox that fsyncs before answering 250.

What it is not: a hardened or production configuration. It never touches /etc/dovecot or
the system instance and never binds 143/993/24.

    with DovecotServer(tmp_path, users={"a@x.go.th": "pw"}, master_user=("svc", "pw")) as dc:
        imaplib.IMAP4(dc.host, dc.imap_port) ...
        dc.message_count("a@x.go.th")

    # Postfix SASL through this Dovecot; "svc" may also AUTH to Postfix as itself:
    with DovecotServer(tmp_path, users={...}, master_users={"svc": "pw"}, sasl=True) as dc:
        PostfixServer(tmp_path, sasl_dovecot=(dc.host, dc.auth_port), ...)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.peers import (
    LOOPBACK,
    PeerError,
    PeerServer,
    ensure_free,
    free_port,
    kill_leftovers,
    log_tail,
    process_tree,
    require_binary,
    self_signed_cert,
    traversable_by,
    wait_for_ports,
)


def _passwd_line(user: str, password: str) -> str:
    # passwd-file has no escaping: a ':' or newline would silently shift fields.
    for value in (user, password):
        if any(c in value for c in ":\n\r"):
            raise ValueError(f"passwd-file cannot hold ':' or newlines: {value!r}")
    return f"{user}:{{PLAIN}}{password}::::::\n"


class DovecotServer(PeerServer):
    """Private Dovecot; use as a context manager (start on enter, stop + clean up on exit).

    Ports left as None are picked free at start. ``imaps_port`` exists only with tls=True.
    ``mail_user`` is the existing system account that owns the Maildirs: Dovecot refuses
    uid 0 for mail access, and Debian's ``mail`` (uid 8) exists everywhere.
    """

    host = LOOPBACK

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        users: Mapping[str, str],
        *,
        imap_port: int | None = None,
        imaps_port: int | None = None,
        lmtp_port: int | None = None,
        master_user: tuple[str, str] | None = None,
        master_users: Mapping[str, str] | None = None,
        sasl: bool = False,
        auth_port: int | None = None,
        tls: bool = True,
        hostname: str = "imap.peer.test",
        mail_user: str = "mail",
        debug: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        self.root = Path(tmpdir).resolve() / "dovecot"
        self.users = dict(users)
        self.imap_port = imap_port
        self.imaps_port = imaps_port
        self.lmtp_port = lmtp_port
        self.master_user = master_user
        #: Every master user (``master_user`` is the one-account shorthand).
        self.master_users = dict(master_users or {})
        if master_user is not None:
            self.master_users[master_user[0]] = master_user[1]
        #: With sasl=True: Dovecot's auth service also listens on auth_port (TCP) for
        #: Postfix, and master users may authenticate as themselves (no authzid).
        self.sasl = sasl
        self.auth_port = auth_port
        self.tls = tls
        self.hostname = hostname
        self.debug = debug
        self.start_timeout = start_timeout
        pw = pwd.getpwnam(mail_user)
        self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid

        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.stdout_path = self.root / "dovecot.out"
        self.users_path = self.root / "users"
        self.masters_path = self.root / "master-users"
        self.mail_root = self.root / "mail"
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self._runtime: Path | None = None
        self._mail_store: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        dovecot = require_binary("dovecot", "dovecot-imapd dovecot-lmtpd")
        # A port that already answers would make the readiness check lie.
        ensure_free(self.imap_port, self.imaps_port, self.lmtp_port, self.auth_port)
        self.root.mkdir(parents=True, exist_ok=True)
        self.imap_port = self.imap_port or free_port()
        self.lmtp_port = self.lmtp_port or free_port()
        self.auth_port = (self.auth_port or free_port()) if self.sasl else None
        if self.tls:
            self.imaps_port = self.imaps_port or free_port()
            self.cert_path, self.key_path = self_signed_cert(self.root, self.hostname)
        else:
            self.imaps_port = None

        # Sockets go to a short private dir under /tmp: unix socket paths are limited to
        # 108 bytes and pytest tmp paths can be long. It must be world-traversable because
        # login/stats processes run as dovenull/dovecot.
        self._runtime = Path(tempfile.mkdtemp(prefix="dovecot-peer-"))
        self._runtime.chmod(0o755)

        # The Maildir is written by processes running as mail_uid; if the caller's tmpdir
        # sits under a 0700 directory (pytest's tmp_path does) keep the store in the
        # runtime dir and link it from tmpdir; stop() moves it back.
        if traversable_by(self.root, self.mail_uid, self.mail_gid):
            self._mail_store = self.mail_root
        else:
            self._mail_store = self._runtime / "mail"
            if self.mail_root.is_symlink():
                self.mail_root.unlink()
            elif self.mail_root.exists():  # mail from an earlier start: keep it
                shutil.move(self.mail_root, self._mail_store)
            self.mail_root.symlink_to(self._mail_store)
        self._mail_store.mkdir(exist_ok=True)
        os.chown(self._mail_store, self.mail_uid, self.mail_gid)
        self._mail_store.chmod(0o700)

        self._write_users()
        self.config_path.write_text(self._config())
        with self.stdout_path.open("wb") as out:
            # New session: Ctrl-C on a test run must not hit Dovecot before we stop it.
            self._proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ports = [self.imap_port, self.lmtp_port] + ([self.imaps_port] if self.imaps_port else [])
        ports += [self.auth_port] if self.auth_port else []
        try:
            wait_for_ports(
                self.host, ports, self.start_timeout, self._proc, self.stdout_path, "dovecot"
            )
        except BaseException as e:
            log = log_tail(self.log_path)
            self.stop()
            if isinstance(e, PeerError):
                raise PeerError(f"{e}\n--- dovecot.log ---\n{log}") from None
            raise

    def stop(self) -> None:
        """Stop Dovecot and every child it left, then remove the runtime dir."""
        if self._proc is not None:
            tree = process_tree(self._proc.pid)
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            kill_leftovers(tree[1:])
            self._proc = None
        if self._runtime is not None:
            if self._mail_store is not None and self._mail_store != self.mail_root:
                # Give the mail back to the caller's tmpdir so tests can inspect it after
                # exit, and so nothing is left in /tmp.
                if self.mail_root.is_symlink():
                    self.mail_root.unlink()
                if self._mail_store.exists():
                    shutil.move(self._mail_store, self.mail_root)
                self._mail_store = self.mail_root
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    # -- users and mail ----------------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add or change a user while running (Dovecot re-reads passwd-file on change)."""
        self.users[user] = password
        self._write_users()

    def add_master_user(self, user: str, password: str) -> None:
        """Add or change a master user while running (the file is re-read on change)."""
        self.master_users[user] = password
        self._write_users()

    def maildir(self, user: str) -> Path:
        local, _, domain = user.partition("@")
        return self.mail_root / domain / local / "Maildir"

    def message_count(self, user: str) -> int:
        """Messages in the user's INBOX (new/ + cur/), read straight from the Maildir."""
        n = 0
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                n += sum(1 for e in os.scandir(self.maildir(user) / sub) if e.is_file())
        return n

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- config ------------------------------------------------------------------------

    def _write_users(self) -> None:
        # Written then renamed so a running auth process never reads half a file.
        tmp = self.users_path.with_suffix(".tmp")
        tmp.write_text("".join(_passwd_line(u, p) for u, p in self.users.items()))
        tmp.chmod(0o600)
        tmp.replace(self.users_path)
        if self.master_users:
            tmp = self.masters_path.with_suffix(".tmp")
            tmp.write_text("".join(_passwd_line(u, p) for u, p in self.master_users.items()))
            tmp.chmod(0o600)
            tmp.replace(self.masters_path)

    def _config(self) -> str:
        assert self._runtime is not None
        assert self._mail_store is not None
        # home uses mail_root's real location: Dovecot's mail processes must not depend on
        # the symlink above (it is removed on stop while a process could still run).
        home = f"{self._mail_store}/%d/%n"
        master = ""
        if self.master_users:
            # pass = yes: the target user must also exist in the normal passdb.
            master = f"""
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=PLAIN {self.masters_path}
}}
auth_master_user_separator = *
"""
        if self.tls:
            ssl = f"""
ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
"""
            imaps = f"address = {self.host}\n    port = {self.imaps_port}\n    ssl = yes"
        else:
            ssl = "ssl = no\n"
            imaps = "port = 0"
        as_themselves = auth_listener = ""
        if self.sasl:
            # A master user logging in without an authorisation identity (a box's relay
            # doing AUTH PLAIN at Postfix) is found here, after the people: it
            # authenticates, but has no userdb entry, so it can never open a mailbox of
            # its own. So one service account is the SMTP AUTH identity and the IMAP
            # master user, with one password.
            if self.master_users:
                as_themselves = f"""
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.masters_path}
}}
"""
            # An auth-client socket on TCP (Postfix: smtpd_sasl_path = inet:host:port);
            # a unix socket would have to be reachable by the postfix user.
            auth_listener = f"""
  inet_listener auth-client {{
    address = {self.host}
    port = {self.auth_port}
  }}"""
        debug = "auth_debug = yes\nmail_debug = yes\nauth_verbose = yes\n" if self.debug else ""
        return f"""# Generated by tests/peers/dovecot.py -- private test instance, not production.
instance_name = dovecot-peer-{self.lmtp_port}
base_dir = {self._runtime}/run
state_dir = {self._runtime}/state
listen = {self.host}
protocols = imap lmtp
hostname = {self.hostname}
log_path = {self.log_path}
{debug}
# Maildir owned by an unprivileged existing account; Dovecot refuses uid 0 for mail.
mail_location = maildir:~/Maildir
first_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}

# Loopback only, so plaintext auth is acceptable for the harness; IMAPS is offered too.
disable_plaintext_auth = no
auth_mechanisms = plain login
{ssl}
{master}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.users_path}
}}
{as_themselves}
userdb {{
  driver = passwd-file
  args = {self.users_path}
  default_fields = uid={self.mail_uid} gid={self.mail_gid} home={home}
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.lmtp_port}
  }}
}}
# auth reads the passwd-files in the caller's tmpdir, which may sit under a 0700
# directory the dovecot user cannot enter.
service auth {{
  user = root{auth_listener}
}}
service auth-worker {{
  user = root
}}
"""
