"""The setup path an unprovisioned box serves on its HTTPS port.

The JSON half of the setup path an unprovisioned box serves (no mail, no chat, no
sign-in while unprovisioned); the web wizard (wizard_pages.py) is the other half:

- ``GET /api/v1/setup``: the box's state, id and certificate fingerprint as JSON;
- ``POST /api/v1/setup/provision``: provision in one call with the setup code shown on
  the panel and printed on the console, the agency and the first admin (scripts,
  the benchmark; a technician uses the wizard at ``/setup``).

Wrong setup codes go through the box's `AuthGuard` under one account ("setup"), so a
source that guesses is slowed, then refused, like a wrong password (docs/
sign-in-protection.md); the owner of the code, typing it right, is not.

Once provisioned, the full HTTPS service answers these paths with 403
(`provisioned_setup_routes`): setup never runs again except after a factory reset.

What this is not: the HTTPS machinery (appliance.web.server) or provisioning itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import trio

from appliance.config import Config
from appliance.provisioning.device import certificate_fingerprint
from appliance.provisioning.lifecycle import BoxState, Lifecycle
from appliance.provisioning.provision import (
    ProvisioningError,
    ProvisioningRequest,
    provision,
)
from appliance.security.guard import AuthGuard
from appliance.web.routes import ApiError, Request, Route

log = logging.getLogger("edgebox.setup")

#: The guard's account name for setup-code attempts (no mail address has no @).
SETUP_ACCOUNT: Final = "setup-code"

_TEXT: Final = {"type": "string", "maxLength": 200}

PROVISION_REQUEST: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["setup_code", "domain", "agency_name_th", "admin"],
    "properties": {
        "setup_code": {"type": "string", "maxLength": 40},
        "domain": {"type": "string", "maxLength": 253},
        "agency_name_th": _TEXT,
        "agency_name_en": _TEXT,
        "admin": {
            "type": "object",
            "additionalProperties": False,
            "required": ["address", "name_th", "password"],
            "properties": {
                "address": {"type": "string", "maxLength": 320},
                "name_th": _TEXT,
                "name_en": _TEXT,
                "password": {"type": "string", "maxLength": 1024},
            },
        },
    },
}

SETUP_STATE: Final = {
    "type": "object",
    "required": ["state", "box_id", "hostname", "fingerprint"],
    "properties": {
        "state": {"enum": [s.value for s in BoxState]},
        "box_id": {"type": "string"},
        "hostname": {"type": "string"},
        "fingerprint": {"type": "string"},
        "domain": {"type": ["string", "null"]},
    },
}


@dataclass
class SetupHost:
    """What the HTTPS listener needs while the box is unprovisioned (no `Box` yet)."""

    config: Config


class NoSessions:
    """Nobody is signed in on an unprovisioned box: there are no users."""

    async def resolve(self, token: str) -> None:
        return None


def already_provisioned() -> ApiError:
    return ApiError(
        403,
        "already_provisioned",
        "This box is already set up; setup runs again only after a factory reset",
        "เครื่องนี้ตั้งค่าเรียบร้อยแล้ว จะตั้งค่าใหม่ได้หลังล้างเครื่องเป็นค่าโรงงานเท่านั้น",
    )


class SetupApi:
    """The handlers of the setup path of one unprovisioned box."""

    def __init__(self, lifecycle: Lifecycle, guard: AuthGuard) -> None:
        self.lifecycle = lifecycle
        self.guard = guard
        # One provisioning at a time: a second browser's request waits, then finds
        # the box provisioned and is refused.
        self.lock = trio.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/setup", self.state, "Setup: the box's state", tag="setup",
                  auth=False, response=SETUP_STATE),
            Route("POST", "/api/v1/setup/provision", self.provision,
                  "Setup: provision the box with the setup code", tag="setup", auth=False,
                  request=PROVISION_REQUEST, response=SETUP_STATE,
                  errors=(403, 409, 422, 429), max_body=16 * 1024),
        ]  # fmt: skip

    def _state_body(self) -> dict[str, Any]:
        status = self.lifecycle.status()
        return {
            "state": status.state.value,
            "box_id": status.box_id,
            "hostname": status.hostname,
            "fingerprint": status.fingerprint,
            "domain": status.domain,
        }

    async def state(self, request: Request) -> dict[str, Any]:
        return self._state_body()

    async def provision(self, request: Request) -> dict[str, Any]:
        body = request.json
        source = request.client_ip
        await self.check_code(body["setup_code"], source)
        admin = body["admin"]
        wanted = ProvisioningRequest(
            domain=body["domain"],
            agency_name_th=body["agency_name_th"],
            agency_name_en=body.get("agency_name_en"),
            admin_address=admin["address"],
            admin_name_th=admin["name_th"],
            admin_name_en=admin.get("name_en"),
            admin_password=admin["password"],
        )
        async with self.lock:
            if self.lifecycle.state is not BoxState.UNPROVISIONED:
                raise already_provisioned()
            try:
                identity = await provision(self.lifecycle.data_dir, wanted)
            except ProvisioningError as exc:
                raise ApiError(422, "refused", exc.message_en, exc.message_th) from None
            log.info("provisioned for %s from ip=%s", identity.domain, source)
            self.lifecycle.provisioned()
        answer = self._state_body()
        # The agency's certificate serves HTTPS from the switch on: its fingerprint is
        # the one the technician will see next (and in the mDNS record).
        server_pem = (self.lifecycle.data_dir / "keys" / "server.pem").read_bytes()
        answer.update(
            state=BoxState.PROVISIONED.value,
            domain=identity.domain,
            fingerprint=certificate_fingerprint(server_pem),
        )
        return answer

    async def check_code(self, offered: str, source: str) -> None:
        """Return if *offered* is the setup code; else raise 403, or 429 once refused.

        The API's provision call and the wizard's claim both come through here, so a
        guesser meets one guard whichever door they try.
        """
        admission = self.guard.admit(SETUP_ACCOUNT, source)
        if admission.refused:
            raise _too_many(admission.refused_for)
        try:
            if admission.delay > 0:
                await trio.sleep(admission.delay)
            if not self.lifecycle.device.check_setup_code(offered):
                self.guard.failed(SETUP_ACCOUNT, source)
                log.warning("wrong setup code ip=%s", source)
                raise ApiError(
                    403,
                    "wrong_setup_code",
                    "Wrong setup code: read it again from the box's panel or console",
                    "รหัสตั้งค่าไม่ถูกต้อง กรุณาอ่านรหัสจากหน้าจอของเครื่องอีกครั้ง",
                )
        except ApiError:
            raise
        except BaseException:
            self.guard.abandoned(source)
            raise
        self.guard.succeeded(SETUP_ACCOUNT, source)


def _too_many(wait: float) -> ApiError:
    seconds = int(wait) + 1
    return ApiError(
        429,
        "too_many_attempts",
        f"Too many wrong setup codes from your address; try again in {seconds} s",
        f"ใส่รหัสตั้งค่าผิดหลายครั้งเกินไป กรุณาลองใหม่ในอีก {seconds} วินาที",
        headers={"Retry-After": str(seconds)},
    )


def provisioned_setup_routes() -> list[Route]:
    """The setup paths on a provisioned box: each refused with 403."""

    async def refuse(request: Request) -> None:
        raise already_provisioned()

    return [
        Route("GET", "/setup", refuse, "Setup: refused once provisioned", tag="setup",
              auth=False, kind="page", errors=(403,)),
        Route("GET", "/api/v1/setup", refuse, "Setup: refused once provisioned", tag="setup",
              auth=False, errors=(403,)),
        Route("POST", "/api/v1/setup/provision", refuse, "Setup: refused once provisioned",
              tag="setup", auth=False, errors=(403,)),
        # The wizard's pages and forms (wizard_pages.py): the same clear refusal.
        Route("GET", "/setup/{step}", refuse, "Setup: refused once provisioned", tag="setup",
              auth=False, kind="page", errors=(403,)),
        Route("POST", "/setup/{step}", refuse, "Setup: refused once provisioned", tag="setup",
              auth=False, kind="page", errors=(403,), max_body=64 * 1024),
    ]  # fmt: skip
