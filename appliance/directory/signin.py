"""Checking a password for any protocol: the guard first, then the directory, then the log.

Web and API sign-in, IMAP and SMTP AUTH (and later DAV and app passwords) all call
`SignIn.check`, so the one `AuthGuard` sees every attempt on the box:

1. the guard may *refuse* the source outright (`Refused`: the password is not checked);
2. otherwise the attempt waits the guard's back-off with ``trio.sleep`` — only this
   session waits; every other connection is served meanwhile — and the source is asked
   about once more, since another attempt may have got it refused during the wait;
3. `Directory.authenticate` checks the password (unknown, disabled and remote users
   fail in the time of a wrong password);
4. the outcome goes back to the guard, to the ``edgebox.auth`` log and to the traffic
   log (``auth-ok``, ``auth-failed``, ``auth-refused``) with protocol, account and
   source address; never the password.

What this is not: the counting (`appliance.security.guard`), or any protocol's answer
(each server turns `Refused` and None into its own reply).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import trio

from appliance.compliance.traffic_log import TrafficRecord
from appliance.directory.directory import DirectoryError, normalise_address
from appliance.directory.models import User
from appliance.security.guard import UNKNOWN_SOURCE, AuthGuard

log = logging.getLogger("edgebox.auth")


@dataclass(frozen=True)
class Refused:
    """The guard refused the source: the password was not checked."""

    #: Seconds until the source may try again.
    retry_after: float

    @property
    def minutes(self) -> int:
        """The wait in whole minutes, at least 1 (for messages to people)."""
        return max(1, math.ceil(self.retry_after / 60))


def account_key(address: str) -> str:
    """The address as the guard counts it: normalised, so case tricks share a count."""
    try:
        return normalise_address(address)
    except DirectoryError:
        return address.strip().lower()[:320]


class PasswordCheck(Protocol):
    """What `SignIn` needs of the directory (`Directory.authenticate`)."""

    async def authenticate(self, address: str, password: str) -> User | None: ...


class RecordLog(Protocol):
    """What `SignIn` needs of the traffic log (`TrafficLog.append`)."""

    async def append(self, record: TrafficRecord) -> None: ...


class SignIn:
    """The one password check of the box; see the module docstring."""

    def __init__(self, directory: PasswordCheck, guard: AuthGuard, traffic: RecordLog) -> None:
        self.directory = directory
        self.guard = guard
        self.traffic = traffic

    async def check(
        self, service: str, address: str, password: str, client_ip: str | None
    ) -> User | Refused | None:
        """The user if *password* is theirs; None if not; `Refused` if not checked.

        *service* names the listener in the traffic log ("web", "imap", "smtp-submission").
        """
        ip = client_ip if client_ip and client_ip != UNKNOWN_SOURCE else None
        account = account_key(address)
        guard = self.guard
        admission = guard.admit(account, ip)
        if admission.refused:
            return await self._refused(service, account, ip, admission.refused_for)
        try:
            if admission.delay > 0:
                await trio.sleep(admission.delay)
                wait = guard.refused_for(ip)
                if wait > 0:
                    guard.abandoned(ip)
                    return await self._refused(service, account, ip, wait)
            user = await self.directory.authenticate(address, password)
        except BaseException:
            # Cancelled (the client left) or the directory failed: nothing was learnt.
            guard.abandoned(ip)
            raise
        if user is None:
            guard.failed(account, ip)
            log.warning("auth failed service=%s user=%r ip=%s", service, account, ip)
            await self._record(service, "auth-failed", account, ip, "wrong password")
            return None
        guard.succeeded(account, ip)
        await self._record(service, "auth-ok", user.address, ip, "ok")
        return user

    async def _refused(self, service: str, account: str, ip: str | None, wait: float) -> Refused:
        refused = Refused(wait)
        log.warning("auth refused service=%s user=%r ip=%s: too many failures from the"
                    " source, %.0f s to go", service, account, ip, wait)  # fmt: skip
        await self._record(service, "auth-refused", account, ip, f"retry in {math.ceil(wait)} s")
        return refused

    async def _record(
        self, service: str, event: str, account: str, ip: str | None, result: str
    ) -> None:
        try:
            record = TrafficRecord(
                time=datetime.now(UTC),
                service=service,
                event=event,
                client_ip=ip,
                user=account[:320],
                result=result,
            )
            await self.traffic.append(record)
        except Exception:
            # A full log disk must not lock everybody out; the operator sees it here.
            log.exception("traffic log write failed")
