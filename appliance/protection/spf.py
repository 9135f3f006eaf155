"""SPF (RFC 7208): may this client send mail for the envelope sender's domain?

The evaluation is pyspf's (``spf`` on PyPI, the reference implementation Debian ships
as python3-spf; docs/protection.md says why): `check_host` hands it the client's
address, the MAIL FROM and the HELO name — a null reverse-path is checked as
``postmaster@HELO`` (RFC 7208 §2.4) — and maps its answer to a `SpfCheck`.

pyspf asks DNS through one module-level function, ``spf.DNSLookup``; it is pointed,
once, at `_lookup` below, which asks the `Resolver` the calling thread set (each check
runs in a worker thread, so checks never see each other's). pyspf enforces RFC 7208
§4.6.4 itself (10 DNS-querying terms, 2 void look-ups) and the whole check is bounded
by ``querytime``: past it, a *temperror*.

What this is not: what the MX does with the answer (appliance.protection.authentication
and appliance.mail.smtp.policy); alignment with the From domain (appliance.protection.dmarc).
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
from typing import Any

import spf as pyspf

from appliance.mail.smtp.authentication import SpfCheck
from appliance.protection.resolver import Resolver

log = logging.getLogger("edgebox.spf")

#: RFC 7208 §4.6.4: "at least 20 seconds" for the whole check; then temperror.
TIME_LIMIT = 20.0

RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})

_resolver: contextvars.ContextVar[Resolver] = contextvars.ContextVar("spf_resolver")


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 5.0) -> Any:
    return _resolver.get(Resolver()).spf_lookup(name, qtype, strict, timeout)


# The one way pyspf lets its look-ups be chosen (its own tests do the same).
pyspf.DNSLookup = _lookup


def check_host(
    client_ip: str | None,
    mail_from: str,
    helo: str | None,
    resolver: Resolver,
    time_limit: float = TIME_LIMIT,
) -> SpfCheck:
    """Return SPF's verdict on *client_ip* sending as *mail_from* (or as *helo*)."""
    address = _client_address(client_ip)
    scope = "mailfrom" if mail_from else "helo"
    domain = (mail_from.rpartition("@")[2] if mail_from else (helo or "")).rstrip(".").lower()
    if address is None or not domain or "." not in domain:
        # No address (a test's socketpair) or no domain to check: RFC 7208 §4.3, "none".
        return SpfCheck("none", domain or None, scope, "no domain or address to check")
    token = _resolver.set(resolver)
    try:
        query = pyspf.query(i=address, s=mail_from, h=helo or "", querytime=time_limit)
        result, _code, explanation = query.check()
    except Exception as exc:
        # pyspf turns DNS and syntax trouble into results itself; anything else is a
        # bug of its or ours with hostile input, and the check cannot be made.
        log.warning("SPF: pyspf failed for %s from %s: %r", domain, address, exc)
        result, explanation = "temperror", "SPF check failed"
    finally:
        _resolver.reset(token)
    result = str(result).lower()
    if result not in RESULTS:
        result = "permerror"
    return SpfCheck(result, domain, scope, str(explanation or ""))


def _client_address(client_ip: str | None) -> str | None:
    try:
        ip = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; SPF's ip4 terms
    # must see the IPv4 address (RFC 7208 §5 "<ip>").
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
