"""The HTTPS routes that hand mail clients their settings (documents: autoconfig.py).

- ``GET /.well-known/autoconfig/mail/config-v1.1.xml`` and ``GET /mail/config-v1.1.xml``
  (Thunderbird), no sign-in: the settings are the same for everyone and hold no secret.
- ``POST /autodiscover/autodiscover.xml`` (and the ``/Autodiscover/Autodiscover.xml``
  spelling; GET with ``?email=`` answers the same), no sign-in: Outlook posts its request
  with no cookie and no Origin header. These are ``kind="json"`` routes without a request
  schema, so the server applies neither the page-form CSRF rule nor a media-type check
  and the handler reads the raw body; they are not part of the API list, so they stay out
  of the OpenAPI document.
- ``GET /settings/mobileconfig`` (a page: signed-in users only): the Apple profile of
  the signed-in user, signed with the box's server key.

Only the domain of an address is checked, never whether the user exists: these answers
are unauthenticated, and must not tell a stranger which addresses are real.

What this is not: the documents themselves, which are pure functions in autoconfig.py.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import Config
from appliance.directory import Directory, DirectoryError, normalise_address
from appliance.identity import Identity
from appliance.mail.autoconfig import (
    AUTODISCOVER_TYPE,
    ERROR_ADDRESS_NOT_FOUND,
    ERROR_INVALID_REQUEST,
    ERROR_SCHEMA_NOT_PROVIDED,
    MAX_REQUEST_BYTES,
    OUTLOOK_RESPONSE_NS,
    PROFILE_TYPE,
    THUNDERBIRD_TYPE,
    AutodiscoverRefused,
    MailEndpoints,
    ProfileUser,
    apple_profile,
    autodiscover_error,
    autodiscover_settings,
    parse_autodiscover_request,
    sign_profile,
    thunderbird_config,
)
from appliance.security.tls import TLSPaths
from appliance.web.pages import PageKit
from appliance.web.routes import ApiError, Request, Response, Route

log = logging.getLogger("edgebox.web")

#: RFC 5321 §4.5.3.1 limits an address to 254 octets; a little room for what is wrong.
_ADDRESS_QUERY = {"type": "string", "maxLength": 320}


def autoconfig_routes(
    kit: PageKit, *, config: Config, directory: Directory, identity: Identity, hostname: str
) -> list[Route]:
    """Return the Thunderbird, Outlook and Apple autoconfiguration routes of the box."""
    return AutoconfigPages(
        kit, config=config, directory=directory, identity=identity, hostname=hostname
    ).routes()


class AutoconfigPages:
    """Answers mail clients' questions about the box, from its configuration."""

    def __init__(
        self,
        kit: PageKit,
        *,
        config: Config,
        directory: Directory,
        identity: Identity,
        hostname: str,
    ) -> None:
        self.config = config
        self.directory = directory
        self.identity = identity
        self.kit = kit
        # The ports the listeners bind (config + offset) and the name in the certificate.
        self.endpoints = MailEndpoints.of(config, hostname)

    def routes(self) -> list[Route]:
        def route(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
            return Route(method, path, handler, summary, tag="autoconfig", auth=False, **extra)

        thunderbird = "Thunderbird autoconfig (clientConfig 1.1)"
        outlook = "Outlook autodiscover (MS-OXDSCLI POX)"
        emailaddress = {"emailaddress": _ADDRESS_QUERY}
        email = {"email": _ADDRESS_QUERY}
        post = {"max_body": MAX_REQUEST_BYTES}
        return [
            route("GET", "/.well-known/autoconfig/mail/config-v1.1.xml", self.thunderbird,
                  thunderbird, kind="page", query=emailaddress),
            route("GET", "/mail/config-v1.1.xml", self.thunderbird, thunderbird, kind="page",
                  query=emailaddress),
            route("POST", "/autodiscover/autodiscover.xml", self.autodiscover, outlook, **post),
            route("POST", "/Autodiscover/Autodiscover.xml", self.autodiscover, outlook, **post),
            route("GET", "/autodiscover/autodiscover.xml", self.autodiscover, outlook,
                  query=email),
            route("GET", "/Autodiscover/Autodiscover.xml", self.autodiscover, outlook,
                  query=email),
            Route("GET", "/settings/mobileconfig", self.mobileconfig,
                  "Apple configuration profile of the signed-in user", tag="pages",
                  kind="page"),
        ]  # fmt: skip

    # Thunderbird

    async def thunderbird(self, request: Request) -> Response:
        domains = await self.directory.local_domains()
        asked = request.query.get("emailaddress")
        if asked is not None and _domain_of(asked) not in domains:
            # Not ours: a 404 sends Thunderbird on to its next way of finding settings
            # instead of setting up an account this box would never accept.
            raise ApiError(404, "unknown_domain", "This box does not serve that address",
                           "เครื่องนี้ไม่ได้ให้บริการที่อยู่อีเมลนี้")  # fmt: skip
        identity = self.identity
        document = thunderbird_config(
            self.endpoints,
            provider=identity.domain,
            domains=domains,
            display_name=identity.agency_name,
            short_name=identity.domain,
        )
        return Response(body=document, content_type=THUNDERBIRD_TYPE)

    # Outlook

    async def autodiscover(self, request: Request) -> Response:
        if request.method == "GET":
            address = request.query.get("email")
        else:
            try:
                asked = parse_autodiscover_request(request.body)
            except AutodiscoverRefused as exc:
                raise ApiError(400, "bad_request", f"The autodiscover request is refused: {exc}",
                               "คำขอ autodiscover ไม่ถูกต้อง") from None  # fmt: skip
            if asked.response_schema not in (None, OUTLOOK_RESPONSE_NS):
                # e.g. the ActiveSync ("mobilesync") schema: the box speaks IMAP only.
                return self._error(ERROR_SCHEMA_NOT_PROVIDED, "Provider is not available")
            address = asked.email
        if not address:
            return self._error(ERROR_INVALID_REQUEST, "Invalid Request")
        try:
            address = normalise_address(address)
        except DirectoryError:
            return self._error(ERROR_INVALID_REQUEST, "Invalid Request")
        if address.rpartition("@")[2] not in await self.directory.local_domains():
            return self._error(ERROR_ADDRESS_NOT_FOUND, "The email address cannot be found.")
        document = autodiscover_settings(self.endpoints, address)
        return Response(body=document, content_type=AUTODISCOVER_TYPE)

    def _error(self, code: int, message: str) -> Response:
        document = autodiscover_error(
            code, message, now=datetime.now(UTC), hostname=self.endpoints.hostname
        )
        return Response(body=document, content_type=AUTODISCOVER_TYPE)

    # Apple

    async def mobileconfig(self, request: Request) -> Response:
        user = request.user
        assert user is not None  # a page route with auth: the server signed them in
        lang = await self.kit.language(request)
        keys = await trio.to_thread.run_sync(_read_keys, TLSPaths.in_dir(self._keys_dir))
        profile = apple_profile(
            self.endpoints,
            ProfileUser(user.address, user.display_name(lang)),
            box_id=self.identity.box_id,
            organisation=self.identity.agency_name,
            ca_der=keys.ca.public_bytes(serialization.Encoding.DER),
            lang=lang,
        )
        body = _signed(profile, keys)
        local = user.address.rpartition("@")[0]
        headers = {"Content-Disposition": _attachment(f"edgebox-{local}.mobileconfig")}
        return Response(body=body, content_type=PROFILE_TYPE, headers=headers)

    @property
    def _keys_dir(self) -> Path:
        return self.config.data_dir / "keys"


@dataclass(frozen=True)
class _Keys:
    ca: x509.Certificate
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any


def _read_keys(paths: TLSPaths) -> _Keys:
    """The CA, the server certificate with the rest of its chain, and the server key."""
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    leaf, *chain = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    return _Keys(ca, leaf, tuple(chain), key)


def _signed(profile: bytes, keys: _Keys) -> bytes:
    """The profile as CMS SignedData; unsigned if the key is of a type CMS cannot use."""
    try:
        return sign_profile(profile, keys.key, keys.certificate, keys.chain)
    except TypeError:
        # `cryptography` signs CMS with RSA and EC keys only; the box makes EC keys, so
        # this is a box whose keys were replaced by hand (docs/autoconfig.md).
        log.warning("mobileconfig served unsigned: a %s key cannot sign CMS",
                    type(keys.key).__name__)  # fmt: skip
        return profile


_TOKEN_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _attachment(filename: str) -> str:
    """A Content-Disposition for *filename* (RFC 6266 §4), Thai names as filename*."""
    fallback = _TOKEN_SAFE.sub("_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    # RFC 8187 §3.2: UTF-8 percent-encoded for clients that read it; the ASCII
    # fallback for those that do not. Header values must stay ASCII for h11.
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _domain_of(address: str) -> str | None:
    """The normalised domain of *address*, or None if it is not an address."""
    try:
        return normalise_address(address).rpartition("@")[2]
    except DirectoryError:
        return None
