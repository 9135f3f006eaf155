"""A resolver for in-process tests: DNS records from a dict, no network at all.

`DictResolver` replaces only `Resolver.lookup`, the one primitive, so SPF (pyspf),
DKIM (dkimpy) and DMARC see the same records in the same shapes as from real DNS; the
shapes themselves are tested against a loopback DNS server (tests/peers/dns_stub.py)
in test_authentication.py. A name listed in *failing* answers with a temporary error,
as a resolver that times out would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appliance.protection.resolver import DnsTemporaryError, Resolver


class DictResolver(Resolver):
    """TXT records by name (``{"_dmarc.b.go.th": "v=DMARC1; p=reject"}``), and others."""

    def __init__(
        self,
        txt: dict[str, str] | None = None,
        other: dict[tuple[str, str], list[Any]] | None = None,
        failing: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.records: dict[tuple[str, str], list[Any]] = {
            (name.lower(), "TXT"): [value.encode()] for name, value in (txt or {}).items()
        }
        self.records.update(other or {})
        self.failing = {name.lower() for name in failing}
        #: Every (name, type) asked, in order.
        self.asked: list[tuple[str, str]] = []

    def lookup(self, name: str, rdtype: str, timeout: float = 5.0) -> list[Any]:
        key = (name.rstrip(".").lower(), rdtype)
        self.asked.append(key)
        if key[0] in self.failing:
            raise DnsTemporaryError(f"{name} {rdtype}: timed out")
        return list(self.records.get(key, []))
