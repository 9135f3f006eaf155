"""The SPF and DMARC records an agency should publish beside its DKIM keys.

The box's own domains should say in DNS where their mail comes from and ask every
receiver to refuse the rest (RFC 7208, RFC 7489): then a forgery of an agency address
is refused everywhere, not only on its own box. `sender_records` gives the two TXT
records `edgebox dkim show` and the admin console's DKIM page print:

- SPF: ``v=spf1 mx a:RELAY -all`` — the domain's MX hosts (the box) and the central
  relay its mail leaves by (``central_smtp``; an address becomes ``ip4:``/``ip6:``),
  and nothing else (``-all``);
- DMARC: ``v=DMARC1; p=reject; adkim=r; aspf=r`` — mail that neither DKIM nor SPF
  vouches for in alignment is refused (RFC 7489 §6.3).

What this is not: the DKIM key records (appliance.protection.dkim) or a DNS client:
nothing is published from the box, the agency's DNS administrator does that.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from appliance.protection.dkim import TxtRecord
from appliance.protection.dmarc import ascii_domain

DMARC_VALUE = "v=DMARC1; p=reject; adkim=r; aspf=r"


def spf_value(central_smtp: str) -> str:
    """Return the SPF record for a domain whose mail leaves by *central_smtp* (a URL)."""
    terms = ["v=spf1", "mx"]
    host = urlsplit(central_smtp.strip()).hostname if central_smtp.strip() else None
    if host:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            terms.append(f"a:{host}")
        else:
            terms.append(f"ip{address.version}:{address}")
    terms.append("-all")
    return " ".join(terms)


def sender_records(domain: str, central_smtp: str) -> list[TxtRecord]:
    """Return the SPF and DMARC TXT records *domain* should publish (A-label names)."""
    domain = ascii_domain(domain) or domain
    return [
        TxtRecord(name=domain, value=spf_value(central_smtp), active=True),
        TxtRecord(name=f"_dmarc.{domain}", value=DMARC_VALUE, active=True),
    ]
