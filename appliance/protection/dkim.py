"""DKIM (RFC 6376): sign mail leaving the box per agency domain, verify mail arriving.

Signing. Each agency domain served by the box has its own RSA 2048-bit key, made on the
box and stored sealed under the provisioning secret like the CA key
(`appliance.security.keys.seal`): the private key is never on disk in the clear. Keys
are named by *selector*, ``eb`` and the date they were made (``eb20261207``), so a new
key can be made beside the old one (`DkimKeyring.rotate`): the new key signs at once
while the old one stays published in DNS — mail signed with it may still sit in other
servers' queues — until the admin retires it (`DkimKeyring.retire`). Files in
``DATA/keys``:

==================================  =====  ==============================================
file                                mode   content
==================================  =====  ==============================================
``dkim-DOMAIN.json``                0600   ``{"active": SEL, "published": [SEL, ...]}``
``dkim-DOMAIN-SEL.sealed``          0600   the PEM private key, sealed (purpose ``dkim``)
==================================  =====  ==============================================

The relay signs at the moment a message leaves the box (`sign_outbound`), on the bytes
read from the stored blob, so a resend after a lost reply is signed once again from the
same unsigned blob, never on top of its first signature; a message that already carries
a signature of ours (``d=`` the domain and a selector of ours) is passed through as is.

Verifying. Mail arriving on the MX port gets one ``Authentication-Results`` field (RFC
8601) with a ``dkim=`` result per signature (at most `MAX_SIGNATURES`), our host name as
its authserv-id, and any such field already on the message that claims our authserv-id
is removed first (RFC 8601 §5: it is forged, or at best stale). The DNS look-up is a
function passed in (dkimpy's ``dnsfunc``): production uses dkimpy's own, which asks the
system resolver through dnspython; tests pass a dict.

The MX's one Authentication-Results field, with SPF and DMARC beside DKIM, is written
by appliance.protection.authentication from `verify`'s results (`result_text`).

What this is not: SPF, DMARC, or virus and spam scanning (the rest of
appliance.protection); the signing and verification arithmetic (dkimpy).
"""

from __future__ import annotations

import base64
import encodings.idna
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dkim
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.mail import headers
from appliance.security.keys import seal, shred, unseal
from appliance.store.files import write_atomically

log = logging.getLogger("edgebox.dkim")
#: dkimpy's own complaints (a missing key, a bad signature) under our name.
_dkimpy_log = logging.getLogger("edgebox.dkim.dkimpy")

#: RFC 6376 §3.3.3 / RFC 8301 §3.2: at least 1024 bits, 2048 recommended.
KEY_BITS = 2048
SELECTOR_PREFIX = "eb"
_SEAL_PURPOSE = "dkim"

#: RFC 6376 §5.4.1: the fields a signer SHOULD cover. Fields named here but absent from a
#: message are still signed (as empty), so nobody can add them later (§8.15).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)

#: Signatures verified on one message at most: each costs a DNS look-up.
MAX_SIGNATURES = 5
#: Seconds one key look-up may take; the MX holds the sender's DATA reply meanwhile.
DNS_TIMEOUT = 5

#: A DNS TXT look-up as dkimpy calls it: the name, and a timeout in seconds.
DnsFunc = Callable[..., bytes | None]

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63}|xn--[a-z0-9-]{1,59})$"
)
_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DkimKeyError(Exception):
    """A DKIM key or its state is missing, damaged or cannot be changed as asked."""


@dataclass(frozen=True)
class DomainKeys:
    """The selectors of one agency domain: the one that signs, and all still published."""

    domain: str
    active: str
    published: tuple[str, ...]


@dataclass(frozen=True)
class TxtRecord:
    """One DNS TXT record an agency must publish (RFC 6376 §3.6.2.1)."""

    name: str
    value: str
    active: bool


class DkimKeyring:
    """The DKIM keys of the box's agency domains, in ``DATA/keys``.

    Plain synchronous functions on small files; async callers use a worker thread.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir

    def domains(self) -> list[str]:
        """Return the domains that have a DKIM key, sorted."""
        names = (p.name for p in self.keys_dir.glob("dkim-*.json"))
        return sorted(n[len("dkim-") : -len(".json")] for n in names)

    def keys(self, domain: str) -> DomainKeys | None:
        """Return *domain*'s selectors, or None if it has no key yet."""
        domain = _checked_domain(domain)
        try:
            raw = json.loads(self._state_path(domain).read_bytes())
            active = str(raw["active"])
            published = tuple(str(s) for s in raw["published"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise DkimKeyError(f"DKIM state of {domain} is damaged: {exc}") from None
        return DomainKeys(domain, active, published)

    def ensure(self, domain: str, today: date) -> DomainKeys:
        """Make *domain*'s first key if it has none; return its selectors."""
        return self.keys(domain) or self._add_key(_checked_domain(domain), today, ())

    def rotate(self, domain: str, today: date) -> DomainKeys:
        """Make a new signing key for *domain*; the old ones stay published until retired."""
        current = self.keys(domain)
        if current is None:
            return self.ensure(domain, today)
        return self._add_key(current.domain, today, current.published)

    def retire(self, domain: str, selector: str) -> DomainKeys:
        """Stop publishing *selector* of *domain* and destroy its key (never the active one)."""
        current = self.keys(domain)
        if current is None or selector not in current.published:
            raise DkimKeyError(f"{domain} has no DKIM selector {selector!r}")
        if selector == current.active:
            raise DkimKeyError(f"{selector} signs {domain}'s mail now; rotate before retiring it")
        kept = DomainKeys(
            current.domain, current.active, tuple(s for s in current.published if s != selector)
        )
        self._write_state(kept)
        shred(self._key_path(current.domain, selector))
        return kept

    def private_key(self, domain: str, selector: str) -> bytes:
        """Return the PEM private key of *selector*, unsealed."""
        domain = _checked_domain(domain)
        try:
            sealed = self._key_path(domain, selector).read_bytes()
        except FileNotFoundError:
            raise DkimKeyError(f"DKIM key {selector} of {domain} is missing") from None
        return unseal(self.keys_dir, _purpose(domain, selector), sealed)

    def records(self, domain: str) -> list[TxtRecord]:
        """Return the TXT records *domain* must publish: one per published selector."""
        current = self.keys(domain)
        if current is None:
            return []
        return [
            TxtRecord(
                name=f"{selector}._domainkey.{current.domain}",
                value=txt_value(self.private_key(current.domain, selector)),
                active=selector == current.active,
            )
            for selector in current.published
        ]

    def signer(self, domain: str) -> tuple[str, bytes] | None:
        """Return (selector, private key) that signs *domain*'s mail, or None."""
        try:
            current = self.keys(domain)
        except DkimKeyError:
            return None
        if current is None:
            return None
        return current.active, self.private_key(current.domain, current.active)

    def _add_key(self, domain: str, today: date, published: Sequence[str]) -> DomainKeys:
        selector = _new_selector(today, published)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The key is on disk (fsynced) before the state that names it.
        write_atomically(
            self._key_path(domain, selector), seal(self.keys_dir, _purpose(domain, selector), pem)
        )
        state = DomainKeys(domain, selector, (selector, *published))
        self._write_state(state)
        return state

    def _write_state(self, state: DomainKeys) -> None:
        data = json.dumps({"active": state.active, "published": list(state.published)})
        write_atomically(self._state_path(state.domain), data.encode())

    def _state_path(self, domain: str) -> Path:
        return self.keys_dir / f"dkim-{domain}.json"

    def _key_path(self, domain: str, selector: str) -> Path:
        if not _SELECTOR.match(selector):
            raise DkimKeyError(f"not a DKIM selector: {selector!r}")
        return self.keys_dir / f"dkim-{domain}-{selector}.sealed"


def _purpose(domain: str, selector: str) -> str:
    # The domain and selector in the sealing label: one key's file can never be
    # passed off as another's.
    return f"{_SEAL_PURPOSE} {domain} {selector}"


def _checked_domain(domain: str) -> str:
    # RFC 6376 §3.5 / RFC 8616 §4: d= and the key's DNS name are in A-labels, so a Thai
    # agency domain (stored as U-labels by the directory) is signed as xn--….
    try:
        labels = [encodings.idna.ToASCII(label) for label in domain.strip().rstrip(".").split(".")]
    except UnicodeError:
        raise DkimKeyError(f"not a mail domain: {domain!r}") from None
    normal = b".".join(labels).decode("ascii").lower()
    if not _DOMAIN.match(normal):
        raise DkimKeyError(f"not a mail domain: {domain!r}")
    return normal


def _new_selector(today: date, taken: Sequence[str]) -> str:
    base = f"{SELECTOR_PREFIX}{today:%Y%m%d}"
    selector, n = base, 1
    while selector in taken:
        n += 1
        selector = f"{base}-{n}"
    return selector


def txt_value(private_pem: bytes) -> str:
    """Return the TXT record value publishing *private_pem*'s public key (RFC 6376 §3.6.1)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


# --- signing -------------------------------------------------------------------------


def parse_tags(value: str) -> dict[str, str]:
    """Parse a DKIM tag-list (RFC 6376 §3.2) leniently: ``{tag: value}``, FWS removed.

    Malformed entries are skipped and the first of a repeated tag wins; this only
    decides whether a signature is ours, never whether it is valid (dkimpy does that).
    """
    tags: dict[str, str] = {}
    for spec in value.split(";"):
        name, equals, tag_value = spec.partition("=")
        name = name.strip()
        if not equals or not name or not all(c.isalnum() or c == "_" for c in name):
            continue
        tags.setdefault(name, "".join(tag_value.split()))
    return tags


def signed_by(content: bytes, domain: str, selectors: Sequence[str]) -> bool:
    """Tell whether *content* already has a DKIM-Signature of *domain* by one of *selectors*."""
    for name, value in headers.parse_headers(content):
        if name.lower() != "dkim-signature":
            continue
        tags = parse_tags(value)
        if tags.get("d", "").lower() == domain and tags.get("s", "").lower() in selectors:
            return True
    return False


def author_domain(content: bytes) -> str | None:
    """Return the domain of the message's single From address (RFC 5322 §3.6.2), if any."""
    addresses = headers.from_addresses(headers.parse_headers(content))
    if len(addresses) != 1:
        return None
    return addresses[0].rpartition("@")[2].rstrip(".") or None


def sign(content: bytes, *, domain: str, selector: str, private_pem: bytes) -> bytes:
    """Return *content* with a DKIM-Signature field on top (rsa-sha256, relaxed/relaxed)."""
    field = dkim.sign(
        content,
        selector.encode("ascii"),
        domain.encode("ascii"),
        private_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(SIGNED_HEADERS),
        linesep=b"\r\n",
    )
    return bytes(field) + content


def sign_outbound(keyring: DkimKeyring, content: bytes) -> bytes:
    """Sign *content* for its author's agency domain, once; unchanged if not ours.

    Only a domain with a key on this box is signed (mail relayed for other domains is
    not ours to vouch for), and a message already signed with one of our selectors is
    left as it is, so passing the same bytes twice never adds a second signature.
    """
    domain = author_domain(content)
    if domain is None:
        return content
    try:
        current = keyring.keys(domain)
    except DkimKeyError:
        return content
    if current is None or signed_by(content, current.domain, current.published):
        return content
    private_pem = keyring.private_key(current.domain, current.active)
    return sign(content, domain=current.domain, selector=current.active, private_pem=private_pem)


# --- verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class DkimResult:
    """One ``dkim=`` method result of an Authentication-Results field (RFC 8601 §2.7.1)."""

    #: pass, fail, neutral, temperror, permerror or none.
    result: str
    domain: str | None = None
    selector: str | None = None
    reason: str | None = None


def _mentions(block: bytes, name: bytes) -> bool:
    # A field *name* (lower case) can only be in the header block if its bytes are: a
    # search of the block costs microseconds where parsing it costs far more, and most
    # mail has neither a signature nor an Authentication-Results field.
    return name in block.lower()


def is_signed(content: bytes) -> bool:
    """Tell whether *content* has a DKIM-Signature field (and so needs key look-ups)."""
    if not _mentions(headers.header_block(content), b"dkim-signature"):
        return False
    return any(name.lower() == "dkim-signature" for name, _ in headers.parse_headers(content))


def verify(content: bytes, dnsfunc: DnsFunc) -> list[DkimResult]:
    """Verify each DKIM-Signature of *content* (at most `MAX_SIGNATURES`); none: [none]."""
    if not is_signed(content):
        return [DkimResult("none")]
    signatures = [
        parse_tags(value)
        for name, value in headers.parse_headers(content)
        if name.lower() == "dkim-signature"
    ]
    if not signatures:
        return [DkimResult("none")]
    signatures = signatures[:MAX_SIGNATURES]
    try:
        checker = dkim.DKIM(content, logger=_dkimpy_log, minkey=1024, timeout=DNS_TIMEOUT)
    except Exception as exc:
        # Whatever dkimpy makes of hostile bytes, the message still gets its verdict
        # (and is accepted or refused by the rest of the MX), never a failed session.
        reason = reason_comment(f"message unreadable: {exc}")
        return [
            DkimResult("permerror", t.get("d") or None, t.get("s") or None, reason)
            for t in signatures
        ]
    results: list[DkimResult] = []
    for index, tags in enumerate(signatures):
        domain, selector = tags.get("d") or None, tags.get("s") or None
        lookup = _KeyLookup(dnsfunc)
        try:
            ok = checker.verify(idx=index, dnsfunc=lookup)
        except dkim.DnsTimeoutError:
            results.append(DkimResult("temperror", domain, selector, "key lookup timed out"))
            continue
        except dkim.ValidationError as exc:
            # dkimpy raises for a body hash mismatch (RFC 6376 §6.1.3): verification
            # failed, a "fail" (RFC 8601 §2.7.1); its other checks are of the signature's form.
            verdict = "fail" if "body hash mismatch" in str(exc) else "permerror"
            results.append(DkimResult(verdict, domain, selector, reason_comment(str(exc))))
            continue
        except Exception as exc:
            # dkimpy's own errors (DKIMException) and anything else its parsers raise
            # on malformed signatures: the signature cannot be evaluated (RFC 8601 §2.7.1).
            if not isinstance(exc, dkim.DKIMException):
                log.warning("DKIM: dkimpy failed on signature %d: %r", index, exc)
            results.append(DkimResult("permerror", domain, selector, reason_comment(str(exc))))
            continue
        if ok:
            results.append(DkimResult("pass", domain, selector))
        else:
            # dkimpy answers False for a key it could not get as well as for a wrong
            # signature; the look-up itself tells which (RFC 6376 §6.1.2).
            verdict, reason = lookup.verdict()
            results.append(DkimResult(verdict, domain, selector, reason))
    return results


class _KeyLookup:
    """Wrap a DnsFunc, remembering what the key look-up found."""

    def __init__(self, dnsfunc: DnsFunc) -> None:
        self.dnsfunc = dnsfunc
        self.outcome = "not asked"

    def __call__(self, name: bytes, timeout: float = DNS_TIMEOUT) -> bytes | None:
        try:
            value = self.dnsfunc(name, timeout=timeout)
        except dkim.DnsTimeoutError:
            self.outcome = "timeout"
            raise
        if not value:
            self.outcome = "missing"
        else:
            try:
                dkim.evaluate_pk(name, value)
                self.outcome = "found"
            except (dkim.KeyFormatError, ValueError):
                self.outcome = "unusable"
        return value

    def verdict(self) -> tuple[str, str]:
        if self.outcome == "timeout":
            return "temperror", "key lookup timed out"
        if self.outcome == "missing":
            return "permerror", "no key for signature"
        if self.outcome == "unusable":
            return "permerror", "unusable key"
        if self.outcome == "not asked":
            # dkimpy gave up before the look-up: the signature field itself is unusable.
            return "permerror", "signature unreadable"
        return "fail", "signature did not verify"


def reason_comment(text: str) -> str:
    # A comment in the field: printable, no parentheses or quotes, short.
    return "".join(c for c in text if c.isprintable() and c not in '()"\\')[:80]


def authserv_id(value: str) -> str | None:
    """Return the authserv-id of an Authentication-Results value (RFC 8601 §2.2), lower-cased.

    It is the first token, before any version number and the first ``;``; comments in
    parentheses around it (CFWS) are skipped.
    """
    text = _strip_comments(value.split(";", 1)[0]).strip()
    if not text:
        return None
    token = text.split()[0].strip('"').lower()
    return token or None


def _strip_comments(text: str) -> str:
    out: list[str] = []
    depth = 0
    escaped = False
    for char in text:
        if depth:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            continue
        if char == "(":
            depth = 1
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def without_our_results(content: bytes, our_id: str) -> bytes:
    """Remove every Authentication-Results field claiming *our_id* (RFC 8601 §5)."""
    block = headers.header_block(content)
    if not _mentions(block, b"authentication-results"):
        return content
    body = content[len(block) :]
    # Group the lines into fields first: the authserv-id may be on a continuation line.
    fields: list[list[bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = [field for field in fields if not _claims(field, our_id.lower())]
    return b"".join(b"".join(field) for field in kept) + body


def _claims(field: list[bytes], our_id: str) -> bool:
    name, colon, value = field[0].partition(b":")
    if not colon or name.strip().lower() != b"authentication-results":
        return False
    unfolded = b" ".join(part.strip() for part in (value, *field[1:]))
    return authserv_id(unfolded.decode("utf-8", "replace")) == our_id


def results_field(our_id: str, results: Sequence[DkimResult]) -> bytes:
    """Build the Authentication-Results field (RFC 8601 §2.2), folded, CRLF-terminated."""
    parts = [result_text(item) for item in results]
    text = f"Authentication-Results: {our_id};\r\n\t" + ";\r\n\t".join(parts) + "\r\n"
    return text.encode("utf-8")


def result_text(item: DkimResult) -> str:
    """Return one ``dkim=`` resinfo of an Authentication-Results field (RFC 8601 §2.2)."""
    text = f"dkim={item.result}"
    if item.reason:
        text += f" ({item.reason})"
    if item.domain:
        text += f" header.d={pvalue(item.domain)}"
    if item.selector:
        text += f" header.s={pvalue(item.selector)}"
    return text


def pvalue(text: str) -> str:
    """Return *text* as an RFC 8601 §2.2 pvalue: a token, or a quoted string."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,253}", text):
        return text
    return '"' + "".join(c for c in text if c.isprintable() and c not in '"\\')[:253] + '"'


def authenticate_inbound(content: bytes, our_id: str, dnsfunc: DnsFunc) -> bytes:
    """Verify *content*'s DKIM signatures; return it with our Authentication-Results on top."""
    results = verify(content, dnsfunc)
    return results_field(our_id, results) + without_our_results(content, our_id)


def system_dnsfunc(name: bytes, timeout: float = DNS_TIMEOUT) -> bytes | None:
    """Look up a DKIM key's TXT record through the system resolver (dnspython).

    No record (NXDOMAIN, no TXT) is None: a PERMFAIL for the signature. A timeout, a
    SERVFAIL or no resolver at all is `dkim.DnsTimeoutError`: a TEMPFAIL (RFC 6376
    §6.1.2), which a cut of the link must never turn into a permanent verdict.
    """
    try:
        qname = dns.name.from_text(name.decode("ascii"))
    except (UnicodeError, dns.exception.DNSException):
        return None  # not a name that can have a key
    try:
        answer = dns.resolver.resolve(
            qname, "TXT", lifetime=timeout, search=False, raise_on_no_answer=False
        )
    except dns.resolver.NXDOMAIN:
        return None
    except dns.exception.DNSException as exc:
        raise dkim.DnsTimeoutError(f"{qname}: {exc}") from None
    for rrset in answer.response.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            # RFC 6376 §3.6.2.2: the strings of one record are joined without spaces.
            return b"".join(next(iter(rrset)).strings)
    return None
